"""libkiki: the thin common library every Kiki service, app and agent uses."""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version is the installed distribution's, read on first use: importlib.metadata (email,
    # zipfile, csv ...) costs more than the rest of a ``kiki --help`` start, and most starts
    # never ask for it.
    if name != "__version__":
        raise AttributeError(f"module 'libkiki' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("libkiki")
    except PackageNotFoundError:  # running from a source tree without an install
        found = "0.0.0"
    globals()["__version__"] = found
    return found
