"""Writing an evaluation's results (the model side is `medclip_jax.evaluation.model_view`)."""

import json
import os
from typing import Any

import jax


def write_results(output_dir: str, name: str, results: dict[str, Any], table: str) -> str:
    """Writes `<name>.json` and `<name>.md` (process 0 only); returns the JSON path."""
    path = os.path.join(output_dir, f"{name}.json")
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        with open(os.path.join(output_dir, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return path
