"""GDAL's side of an S3-compatible object store: the `/vsis3/` path of an object and the configuration under which GDAL
reads a COG from it by HTTP range requests, block by block, instead of downloading the file.

No Dagster and no boto here: what GDAL needs to open `/vsis3/<bucket>/<key>` with rasterio (`with
rasterio.Env(**gdal_s3_options(...)), rasterio.open(vsis3_path(...))`). The options come from the caller (a resource
reading `EnvVar`s), never from this module's environment, and are never logged or put in metadata.
"""

from __future__ import annotations

from urllib.parse import urlparse

# GDAL's in-memory cache of fetched byte ranges per opened remote file, on top of its block cache: a window that spans
# blocks already fetched for a neighbour is served from memory.
VSI_CACHE_BYTES = 64 * 1024 * 1024


def vsis3_path(bucket: str, key: str) -> str:
    """The GDAL virtual path of an object."""
    if not bucket or "/" in bucket:
        raise ValueError(f"not a bucket name: {bucket!r}")
    return f"/vsis3/{bucket}/{key.lstrip('/')}"


def object_url_of(path: str) -> str:
    """The s3:// URL of a `/vsis3/` path (what users, boto and QGIS take); any other path as it is."""
    return f"s3://{path[len('/vsis3/'):]}" if path.startswith("/vsis3/") else path


# GDAL's remote file systems and their streaming variants: one GET read front to back instead of a range request per
# block run. For a scan that reads a whole COG in file order (tiling), that is one request for the whole object.
_STREAMING = {"/vsis3/": "/vsis3_streaming/", "/vsigs/": "/vsigs_streaming/", "/vsiaz/": "/vsiaz_streaming/",
              "/vsicurl/": "/vsicurl_streaming/"}


def sequential_scan_path(path: str) -> str:
    """The path to open for reading a raster once, front to back: a remote object's streaming variant (a forward seek
    reads on, a backward one starts a new request), a local path as it is."""
    for prefix, streaming in _STREAMING.items():
        if path.startswith(prefix):
            return streaming + path[len(prefix):]
    return path


def gdal_s3_options(endpoint_url: str | None = None) -> dict[str, str]:
    """GDAL configuration for reading COGs from S3 (AWS when `endpoint_url` is None, else that endpoint with
    path-style addressing, as MinIO, Ceph and moto need): no directory listing on open (a COG is one object), only
    `.tif` objects, consecutive ranges merged into one request, HTTP/2 multiplexing, a range cache. Credentials are
    not options: rasterio takes them through a session (`s3_raster_env`)."""
    options = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(VSI_CACHE_BYTES),
    }
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) endpoint URL: {endpoint_url!r} (e.g. http://127.0.0.1:9000)")
        options.update({"AWS_S3_ENDPOINT": parsed.netloc, "AWS_HTTPS": "YES" if parsed.scheme == "https" else "NO",
                        "AWS_VIRTUAL_HOSTING": "FALSE"})
    return options


def s3_raster_env(endpoint_url: str | None = None, access_key_id: str | None = None,
                  secret_access_key: str | None = None, region: str | None = None):
    """A rasterio.Env in which `/vsis3/` paths read from the store: `gdal_s3_options` plus the credentials as a
    rasterio AWS session (without a key pair, boto3's default chain: environment, profile, instance role)."""
    import rasterio
    from rasterio.session import AWSSession

    session = AWSSession(aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
                         region_name=region or None)
    return rasterio.Env(session=session, **gdal_s3_options(endpoint_url))
