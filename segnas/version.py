"""The version of segnas: what every file it writes records (``written_by``), the package metadata's version
(``pyproject.toml`` reads it from here) and the newest entry of CHANGELOG.md."""

__version__ = "0.2.0"
