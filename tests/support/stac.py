"""Crawling a STAC catalog served over HTTP, as a STAC client does (catalog -> collection -> item -> asset)."""

from urllib.parse import urljoin

CATALOG_URL = "http://testserver/store/stac/catalog.json"  # the viewer's /store/ under FastAPI's test client


def first_scene_item(client, base: str = CATALOG_URL) -> tuple[dict, str]:
    """(the first item of the Scenes collection, its URL), each link followed from `base` by the relative hrefs."""
    catalog = client.get(base).json()
    collection_url = urljoin(base, next(link["href"] for link in catalog["links"] if link.get("title") == "Scenes"))
    collection = client.get(collection_url).json()
    item_url = urljoin(collection_url, next(link["href"] for link in collection["links"] if link["rel"] == "item"))
    return client.get(item_url).json(), item_url
