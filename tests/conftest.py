"""Test settings: never touch a model or dataset hub; compare notebook outputs without stderr."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collectstart(collector):
    """nbval: stderr (warnings, progress bars) differs from run to run and is not compared."""
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)

from tests.fixtures import synthetic_run, tiny_whisper  # noqa: E402, F401  (registered for every test module)
