"""sdbatch: render very large batches of Stable Diffusion images on Ray, resumably, into S3 or a folder."""

from sdbatch.version import __version__

__all__ = ["__version__", "open_results", "read_results"]


def __getattr__(name: str):
    # Lazy, so `import sdbatch` stays cheap and free of pyarrow/boto3 for the CLI's start-up.
    if name in ("read_results", "open_results"):
        from sdbatch.output import results

        return getattr(results, name)
    raise AttributeError(name)
