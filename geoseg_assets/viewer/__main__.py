"""`python -m geoseg_assets.viewer [--host 127.0.0.1] [--port 3100]`: the viewer over the data store and class map of
the code location (`GEOSEG_RESOURCES` profile, `GEOSEG_DATA_DIR`), as `make ui` starts it."""

import argparse

import uvicorn

from geoseg_assets.viewer.app import create_app

DEFAULT_PORT = 3100


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    import dagster as dg

    from geoseg_assets.definitions import defs  # the code location's resources, profile and data root

    # Built as a step builds them: `EnvVar` settings resolved, and an object store's GDAL settings entered for the
    # app's lifetime, so its tiles read COGs in place.
    wanted = {name: defs.resources[name] for name in ("data_store", "class_map")}
    with dg.build_resources(wanted) as built:
        app = create_app(built.data_store, built.class_map)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
