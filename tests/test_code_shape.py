"""The code's shape: long work is split into named stages, so no function grows past a screen."""

from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT

MAX_FUNCTION_LINES = 80
PACKAGES = ("geomed_mim", "data_pipelines")


def function_lengths() -> list[tuple[int, str]]:
    rows = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    where = f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"
                    rows.append((length, where))
    return rows


def test_no_function_is_longer_than_a_screen():
    rows = function_lengths()
    assert len(rows) > 100  # the scan really read the packages
    too_long = [f"{where} ({n} lines)" for n, where in rows if n > MAX_FUNCTION_LINES]
    assert not too_long, "split into named stages: " + "; ".join(too_long)


# private names of torch and Lightning the code once used: each has a public replacement
# (Tensor.share_memory_, LightningCLI.setup_parser / parse_arguments, the instantiated config,
# torch.utils.data.default_collate, the LoaderPosition callback for Lightning's loop state)
PRIVATE_DEPENDENCY_NAMES = (
    "torch.utils.data._utils",
    "_typed_storage",
    "_new_shared",
    "_prepare_subcommand_parser",
    "_parse_ckpt_path",
    "self._get(",
    "fit_loop.",
    "_combined_loader",
    "_data_fetcher",
)


def test_no_private_api_of_a_dependency_is_used():
    found = [
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for name in PRIVATE_DEPENDENCY_NAMES
        if name in path.read_text()
    ]
    assert not found, "use the public API: " + "; ".join(found)
