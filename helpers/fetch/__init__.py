"""Stage 1 (01_fetch): CIFs of C/H/N/O COD entries, from the COD web service or a folder, into the raw
ASE database; unreadable entries are kept with the reason."""

from helpers.fetch.stage import FetchReport, fetch

__all__ = ["FetchReport", "fetch"]
