"""The geoseg viewer: a small FastAPI app over the data store, started by `make ui` next to Dagster.

Per region and date a Leaflet map shows the scene (true or false colour), the label mask, the prediction, its
polygons and, when written, each class's probability, with a class legend, an opacity slider and a slider over the
region's dates; the partition's quality and drift reports are served as pages; the STAC catalog and the outputs it
lists are served as files with HTTP ranges under /store/ (STAC clients, QGIS). Asset metadata links here
(`viewer_url` on DataStore). Tiles are rendered on request from the COGs by window (`tiles.py`); every region and
date is checked as a partition key before it becomes a path, and only the data store's own outputs are opened.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path, PurePath

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from geoseg_assets.viewer import tiles
from geoseg_assets.viewer.links import REPORT_PAGES, STORE_PREFIX, catalog_url, report_url
from resources.catalog import (
    DATA_DRIFT_HTML,
    DATA_QUALITY_HTML,
    MASK,
    MODEL_QUALITY_HTML,
    PREDICTED_CLASSES,
    PREDICTED_POLYGONS,
    PREDICTED_PROBABILITIES,
    PREDICTION_DRIFT_HTML,
    SCENE_COG,
    STAC_CATALOG,
    OutputFile,
)
from resources.class_map import ClassMapResource
from resources.data_store import DataStore

STATIC = Path(__file__).parent / "static"
LAYERS: dict[str, OutputFile] = {"scene": SCENE_COG, "mask": MASK, "prediction": PREDICTED_CLASSES}
REPORTS: dict[str, OutputFile] = dict(zip(REPORT_PAGES, (DATA_QUALITY_HTML, DATA_DRIFT_HTML, PREDICTION_DRIFT_HTML)))
PNG = "image/png"
# What /store/ serves: the STAC catalog's folder and the outputs its items link to, by file type; nothing else of the
# data root (datasets, checkpoints, temp files).
STORE_FOLDERS = frozenset({STAC_CATALOG.asset, SCENE_COG.asset, MASK.asset, PREDICTED_CLASSES.asset})
STORE_TYPES = {".json": "application/json", ".tif": "image/tiff; application=geotiff", ".png": PNG,
               ".gpkg": "application/geopackage+sqlite3"}


def create_app(store: DataStore, class_map: ClassMapResource) -> FastAPI:
    """The viewer over `store`, with the legend's class names from `class_map`."""
    app = FastAPI(title="geoseg viewer", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def partition_file(output: OutputFile, region: str, date: str) -> PurePath:
        """The output's file (or object) of a partition, whether or not it exists; 400 for a bad key."""
        try:
            return store.file(output, {"region": region, "date": date})
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    def missing(output: OutputFile, region: str, date: str) -> HTTPException:
        return HTTPException(404, f"no {output.asset} output for region={region} date={date}")

    def existing(output: OutputFile, region: str, date: str) -> PurePath:
        """The output's file (or object) of a partition; 404 naming it when it does not exist, 400 for a bad key."""
        path = partition_file(output, region, date)
        if not store.path_exists(path):
            raise missing(output, region, date)
        return path

    def dates_of(region: str) -> list[str]:
        return sorted(p["date"] for p in store.partitions_with(SCENE_COG) if p["region"] == region)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        by_region: dict[str, list[str]] = {}
        for p in store.partitions_with(SCENE_COG):
            by_region.setdefault(p["region"], []).append(p["date"])
        rows = "".join(
            f"<li><b>{html.escape(region)}</b>: " + ", ".join(
                f'<a href="/map/{html.escape(region)}/{html.escape(d)}">{html.escape(d)}</a>' for d in sorted(dates))
            + "</li>"
            for region, dates in sorted(by_region.items()))
        model = '<p><a href="/reports/model_quality">model quality report</a></p>' if store.exists(
            MODEL_QUALITY_HTML) else ""
        if store.exists(STAC_CATALOG):
            model += f'<p><a href="{catalog_url("")}">STAC catalog</a> (open this URL in QGIS or STAC Browser)</p>'
        return PAGE.format(title="geoseg viewer", body=f"<h1>geoseg viewer</h1><ul>{rows or '<li>no scenes yet</li>'}"
                           f"</ul>{model}")

    @app.get("/map/{region}/{date}", response_class=HTMLResponse)
    def map_page(region: str, date: str) -> str:
        scene = existing(SCENE_COG, region, date)
        dims = {"region": region, "date": date}
        west, south, east, north = tiles.geographic_bounds(scene)
        layers = [name for name, output in LAYERS.items() if name != "scene" and store.exists(output, dims)]
        legend = _legend(class_map, region, store.file(PREDICTED_CLASSES, dims) if "prediction" in layers else
                         store.file(MASK, dims) if "mask" in layers else None)
        reports = [(name, report_url("", name, region, date)) for name, output in REPORTS.items()
                   if store.exists(output, dims)]
        probabilities = (tiles.probability_classes(store.file(PREDICTED_PROBABILITIES, dims))
                         if store.exists(PREDICTED_PROBABILITIES, dims) else [])
        config = {"region": region, "date": date, "dates": dates_of(region), "layers": layers,
                  "bounds": [[south, west], [north, east]], "probabilities": probabilities,
                  "polygons": store.exists(PREDICTED_POLYGONS, dims)}
        legend_html = "".join(
            f'<li><span class="swatch" style="background:rgb{tuple(colour)}"></span>{html.escape(name)} '
            f'<small>({cid})</small></li>' for cid, name, colour in legend)
        report_html = " | ".join(f'<a href="{url}">{name.replace("_", " ")} report</a>' for name, url in reports)
        body = MAP_BODY.format(region=html.escape(region), date=html.escape(date), legend=legend_html,
                               reports=report_html or "no reports yet", config=json.dumps(config))
        return PAGE.format(title=f"geoseg {html.escape(region)} {html.escape(date)}", body=body)

    @app.get("/tiles/{layer}/{region}/{date}/{z}/{x}/{y}.png")
    def tile(layer: str, region: str, date: str, z: int, x: int, y: int) -> Response:
        if layer not in LAYERS:
            raise HTTPException(404, f"no layer {layer!r}; layers: {', '.join(LAYERS)}")
        if layer != "scene":
            return _tile_response(tiles.class_tile(existing(LAYERS[layer], region, date), z, x, y))
        path = partition_file(SCENE_COG, region, date)
        try:  # its version (size + mtime, or ETag) is also the existence check: one stat or HEAD per tile
            version = store.version_of(path)
        except FileNotFoundError as exc:
            raise missing(SCENE_COG, region, date) from exc
        return _tile_response(tiles.scene_tile(path, z, x, y, version))

    @app.get("/tiles/probability/{region}/{date}/{class_name}/{z}/{x}/{y}.png")
    def probability_tile(region: str, date: str, class_name: str, z: int, x: int, y: int) -> Response:
        path = existing(PREDICTED_PROBABILITIES, region, date)
        try:
            return _tile_response(tiles.probability_tile(path, class_name, z, x, y))
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from exc

    @app.get("/polygons/{region}/{date}.geojson")
    def polygons(region: str, date: str) -> Response:
        import geopandas as gpd

        frame = gpd.read_file(io.BytesIO(store.read_bytes(existing(PREDICTED_POLYGONS, region, date)))).to_crs(4326)
        return Response(frame.to_json(drop_id=True), media_type="application/geo+json")

    @app.get(STORE_PREFIX + "/{path:path}")
    def store_file(path: str, request: Request) -> Response:
        """A file of the STAC catalog or of an output it lists, with HTTP ranges (GDAL's /vsicurl/ reads COGs so)."""
        parts = Path(path).parts
        if (not parts or parts[0] not in STORE_FOLDERS or any(p in ("..", ".") or p.startswith(".") for p in parts)
                or Path(path).suffix not in STORE_TYPES):
            raise HTTPException(404, f"{path!r} is not a file of the STAC catalog or of the outputs it lists")
        if store.remote:
            return object_response(store, store.partition_dir(parts[0]).joinpath(*parts[1:]),
                                   STORE_TYPES[Path(path).suffix], request.headers.get("range"))
        root = Path(store.root).resolve()
        target = (root / path).resolve()  # a symlink out of the data root is not served
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"no file {path!r} in the data store")
        return FileResponse(target, media_type=STORE_TYPES[target.suffix])

    @app.get("/reports/model_quality")
    def model_quality() -> Response:
        if not store.exists(MODEL_QUALITY_HTML):
            raise HTTPException(404, "no model quality report yet: materialize model_quality_report")
        return Response(store.read_bytes(store.file(MODEL_QUALITY_HTML)), media_type="text/html")

    @app.get("/reports/{report}/{region}/{date}")
    def report(report: str, region: str, date: str) -> Response:
        if report not in REPORTS:
            raise HTTPException(404, f"no report {report!r}; reports: {', '.join(REPORTS)}")
        return Response(store.read_bytes(existing(REPORTS[report], region, date)), media_type="text/html")

    return app


def _tile_response(png: bytes | None) -> Response:
    """A tile as a PNG response; 204 (no content) where the COG has no pixels."""
    if png is None:
        return Response(status_code=204)
    return Response(png, media_type=PNG, headers={"Cache-Control": "no-cache"})


def object_response(store: DataStore, path: PurePath, media_type: str, byte_range: str | None) -> Response:
    """An object of the store as a response: whole, or the one byte range a `Range: bytes=a-b` header asks for (206),
    fetched by a ranged GET and streamed on, so a COG read through the viewer costs the store only the bytes asked for
    and the viewer no more than a chunk of memory."""
    try:
        found = store.open_range(path, byte_range)
    except FileNotFoundError as exc:
        raise HTTPException(404, f"no object {store.display(path)}") from exc
    except ValueError as exc:
        raise HTTPException(416, str(exc)) from exc
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(found.length)}
    if found.served is not None:
        headers["Content-Range"] = f"bytes {found.served[0]}-{found.served[1]}/{found.size}"
    return StreamingResponse(found.chunks, status_code=200 if found.served is None else 206, media_type=media_type,
                             headers=headers)


def _legend(class_map: ClassMapResource, region: str, class_cog: PurePath | None) -> list[tuple[int, str, tuple]]:
    """(id, name, colour) of the region's classes, coloured as the class COG draws them when there is one."""
    classes = class_map.for_region(region)
    colours = tiles.class_colours(class_cog) if class_cog is not None else {}
    return [(c.id, c.name, colours.get(c.id, tuple(c.color))) for c in classes.classes]


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/static/leaflet.css"><script src="/static/leaflet.js"></script>
<style>body{{font-family:sans-serif;margin:0}} h1{{margin:8px}} #map{{height:80vh}}
#panel{{padding:6px 10px}} .swatch{{display:inline-block;width:14px;height:14px;margin-right:6px;
vertical-align:middle;border:1px solid #444}} #legend{{list-style:none;padding:0;display:flex;flex-wrap:wrap;
gap:12px}}</style></head><body>{body}</body></html>"""

MAP_BODY = """<div id="panel"><b>{region}</b> <span id="date">{date}</span>
 &nbsp; date <input id="dates" type="range" min="0" step="1"> &nbsp; overlay opacity
 <input id="opacity" type="range" min="0" max="100" value="70"> &nbsp; {reports} &nbsp; <a href="/">all scenes</a>
 <ul id="legend">{legend}</ul></div><div id="map"></div>
<script>
const cfg = {config};
const map = L.map("map");
map.fitBounds(cfg.bounds);
const url = (layer) => `/tiles/${{layer}}/${{cfg.region}}/${{cfg.date}}/{{z}}/{{x}}/{{y}}.png`;
const scene = L.tileLayer(url("scene"), {{maxZoom: 20, attribution: "geoseg"}}).addTo(map);
const overlays = {{}};
for (const layer of cfg.layers) {{
  overlays[layer] = L.tileLayer(url(layer), {{maxZoom: 20, opacity: 0.7}});
}}
if (overlays.prediction) overlays.prediction.addTo(map); else if (overlays.mask) overlays.mask.addTo(map);
if (cfg.polygons) {{
  fetch(`/polygons/${{cfg.region}}/${{cfg.date}}.geojson`).then(r => r.json()).then(data => {{
    overlays["prediction polygons"] = L.geoJSON(data, {{style: {{color: "#ffffff", weight: 1, fill: false}}}});
    control.addOverlay(overlays["prediction polygons"], "prediction polygons");
  }});
}}
for (const name of cfg.probabilities) {{
  overlays[`probability of ${{name}}`] = L.tileLayer(
    `/tiles/probability/${{cfg.region}}/${{cfg.date}}/${{name}}/{{z}}/{{x}}/{{y}}.png`, {{maxZoom: 20, opacity: 0.7}});
}}
const control = L.control.layers({{scene: scene}}, overlays).addTo(map);
document.getElementById("opacity").addEventListener("input", (e) => {{
  for (const layer of Object.values(overlays)) {{
    if (layer.setOpacity) layer.setOpacity(e.target.value / 100);
  }}
}});
const slider = document.getElementById("dates");
slider.max = cfg.dates.length - 1;
slider.value = cfg.dates.indexOf(cfg.date);
slider.addEventListener("change", (e) => {{
  window.location = `/map/${{cfg.region}}/${{cfg.dates[e.target.value]}}`;
}});
</script>"""
