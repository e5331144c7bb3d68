"""The leaderboard site: turns committed records into static HTML pages.

This folder is named ``site`` in the repository but is imported as ``leaderboard``
(``site`` is a standard-library module).
"""

from leaderboard.build import build_site

__all__ = ["build_site"]
