"""URLs of viewer pages, for asset metadata (no web framework imported: the code location loads this)."""

REPORT_PAGES = ("data_quality", "data_drift", "prediction_drift")  # partitioned reports; model_quality is global


def map_url(base_url: str, region: str, date: str) -> str:
    """The viewer's map of one partition."""
    return f"{base_url.rstrip('/')}/map/{region}/{date}"


def report_url(base_url: str, report: str, region: str | None = None, date: str | None = None) -> str:
    """A report page: a partition's (`REPORT_PAGES`) or, without region and date, the model quality report."""
    return f"{base_url.rstrip('/')}/reports/{report}" + (f"/{region}/{date}" if region else "")


STORE_PREFIX = "/store"  # the viewer serves the STAC catalog and the outputs it lists under this path


def catalog_url(base_url: str) -> str:
    """The STAC catalog's root as the viewer serves it (STAC Browser, pystac and QGIS open it by URL; its relative
    hrefs resolve to the viewer's copies of the outputs, read with HTTP ranges)."""
    return f"{base_url.rstrip('/')}{STORE_PREFIX}/stac/catalog.json"
