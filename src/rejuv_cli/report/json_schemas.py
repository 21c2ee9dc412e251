"""JSON Schemas (draft 2020-12) of rejuv's three machine-readable reports, for the tools that
read them: `rejuv diagnose --json`, `rejuv sweep --json` and the `rejuv.json` that `rejuv fuse`
(and `sweep --out`) writes next to a checkpoint.

diagnose's schema is derived from the report's one declaration (report/schema_spec.py): every
path, its kind, its label as the description. sweep's and rejuv.json's are declared here. What
pipelines gate on is strict (each key and its type; no undeclared key in the measured rows and
sections); descriptive records whose content depends on the inputs (a recipe, a scorer's
information, an input format's facts) are typed as objects without listing their keys.

The schemas ship as files in the package (rejuv_cli/schemas/NAME.schema.json, written from
here by `python docs/schemas.py`, a test keeps them equal) and `rejuv schema NAME` prints one.
Each report's `schema_version` is part of its schema (a `const`): a change to a schema must come
with a new version (tests/test_schemas.py records each version's digest). Pure standard library.
"""

from __future__ import annotations

from rejuv_cli.report.schema_spec import ANY, EACH, SCHEMA, Leaf

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "urn:rejuv-cli:schema:"  # a name, not a download address
NAMES = ("diagnose", "sweep", "rejuv.json")  # `rejuv schema NAME`
# The versions the reports write (the builders import these, so a version is declared once).
VERSIONS = {"diagnose": 1, "sweep": 1, "rejuv.json": 1}


# ---- building blocks --------------------------------------------------------------------------
def _t(*kinds: str, desc: str = "") -> dict:
    """A scalar of the given JSON types ("number" also admits integers)."""
    out: dict = {"type": list(kinds) if len(kinds) > 1 else kinds[0]}
    return out | ({"description": desc} if desc else {})


def _obj(props: dict, *, required: tuple | None = None, open_: bool = False, null: bool = False,
         desc: str = "") -> dict:  # fmt: skip
    """An object with `props`; every key required unless `required` says which; `open_` lets
    undeclared keys through (records whose keys depend on the inputs)."""
    out = {"type": ["object", "null"] if null else "object", "properties": props,
           "required": list(props if required is None else required),
           "additionalProperties": open_}  # fmt: skip
    return out | ({"description": desc} if desc else {})


def _map(values: dict, desc: str = "", null: bool = False) -> dict:
    """An object whose keys are data (tensor names, layers, shard files)."""
    out = {"type": ["object", "null"] if null else "object", "additionalProperties": values}
    return out | ({"description": desc} if desc else {})


def _list(items: dict, desc: str = "") -> dict:
    return {"type": "array", "items": items} | ({"description": desc} if desc else {})


def _record(desc: str, null: bool = False) -> dict:
    """A descriptive object whose keys depend on the inputs."""
    return {"type": ["object", "null"] if null else "object", "description": desc}


def _document(name: str, title: str, desc: str, body: dict) -> dict:
    return {"$schema": DRAFT, "$id": f"{BASE_ID}{name}", "title": title,
            "description": desc, **body}  # fmt: skip


S, INT, N, B = "string", "integer", "number", "boolean"


# ---- rejuv diagnose --json ------------------------------------------------------------------
def _from_spec(node) -> dict:
    """A schema_spec node as JSON Schema. Any value may be null in a report (not measured,
    report/schema.fill_declared); sections are objects with exactly the declared keys."""
    if isinstance(node, Leaf):
        kinds = [] if node.kind == "any" else [node.kind, "null"]
        out = {"type": kinds} if kinds else {}
        return out | ({"description": node.label} if node.label else {})
    if ANY in node:
        return {"type": ["object", "null"], "additionalProperties": _from_spec(node[ANY])}
    if EACH in node:
        return {"type": ["array", "null"], "items": _from_spec(node[EACH])}
    return {"type": ["object", "null"],
            "properties": {k: _from_spec(v) for k, v in node.items()},
            "additionalProperties": False}  # fmt: skip


def diagnose_schema() -> dict:
    body = _from_spec(SCHEMA)
    body["type"] = "object"
    body["required"] = list(SCHEMA)  # fill_declared writes every top-level key
    body["properties"]["schema_version"] = {"const": VERSIONS["diagnose"]}
    return _document("diagnose", "rejuv diagnose report",
                     "`rejuv diagnose --json`: SFT against BASE (and a candidate), the verdict "
                     "and the gates. A value is null when it was not measured; `null_reasons` "
                     "says why where the flags do not.", body)  # fmt: skip


# ---- shared by sweep and rejuv.json ---------------------------------------------------------
_MODEL = {
    "spec": _t(S, desc="as given: a directory or a Hub id[@revision]"),
    "path": _t(S, desc="the directory read"),
    "repo_id": _t(S, "null"),
    "revision": _t(S, "null"),
    "commit": _t(S, "null", desc="the Hub commit, when read from the Hub or its cache"),
    "format": _t(S, desc="how it was read: safetensors, lora, dcp, fsdp, fp8, ..."),
}
_RESET = _obj(
    {
        "settings": _record("the reset settings (recipe `reset` block)"),
        "source": _t(S, desc="'<scorer> scorer' or 'mask <file>'"),
        "unit_map": _t(S, desc="the architecture's unit map"),
        "modules": _list(_t(S)),
        "units": _t(INT, desc="units in the modules considered"),
        "target": _t(INT),
        "selected": _t(INT),
        "protected": _t(INT),
        "by_module": _map(_obj({"units": _t(INT), "reset": _t(INT)})),
        "by_layer": _map(_t(INT)),
        "by_instance": _map(_t(INT)),
        "mask_metadata": _record("how a --mask file was made"),
        "mask_saved": _t(S),
        "scorer": _record("what a data scorer used and found"),
        "seconds": _t(N),
    },
    required=("settings", "source", "unit_map", "modules", "units"),
    null=True,
    desc="null when nothing is reset (--reset 0 or no unit map)",
)
_MEASURES = {
    "entropy_mean": _t(N, "null", desc="mean next-token entropy on the responses (nats)"),
    "entropy_ratio": _t(N, "null", desc="entropy / BASE's"),
    "kl_mean": _t(N, "null", desc="KL to BASE (nats/token)"),
    "nll_mean": _t(N, "null", desc="NLL of the calibration responses (nats/token)"),
    "skill_retained": _t(N, "null", desc="share of SFT's NLL gain over BASE kept"),
    "p_max_mean": _t(N, "null"),
    "confident_share": _t(N, "null"),
    "tokens": _t(INT),
}
_GENERATED = {k: _t(N, "null") for k in ("accuracy", "accuracy_retained", "pass_at_1",
              "pass_at_k", "learnable_share", "all_wrong_share", "all_right_share")}  # fmt: skip
_GENERATED |= {"no_answer": _t(INT, "null"), "truncated": _t(INT, "null")}


def _row(alpha: dict) -> dict:
    return _obj({"alpha": alpha, **_MEASURES, **_GENERATED, "seconds": _t(N)},
                required=("alpha", *_MEASURES))  # fmt: skip


_SWEEP_TABLE = {
    "base": _row(_t("null")),
    "sft": _row(_t("null")),
    "rows": _list(_row(_t(N, desc="α")), desc="one row per α, in the order given"),
    "recommendation": _obj(
        {
            "alpha": _t(N, "null", desc="the recommended α; null: no surgery"),
            "surgery": _t(B),
            "min_skill": _t(N),
            "skill_measure": _t(S),
            "plasticity_measure": _t(S),
            "qualifying": _list(_t(N)),
            "reason": _t(S),
            "heuristic": _t(B),
            "fuse_command": _t(S, "null"),
        },
        required=(
            "alpha",
            "surgery",
            "min_skill",
            "skill_measure",
            "plasticity_measure",
            "qualifying",
            "reason",
            "heuristic",
        ),  # fmt: skip
    ),
}


# ---- rejuv sweep --json ----------------------------------------------------------------------
def sweep_schema() -> dict:
    inputs = _obj(
        {
            "base": _t(S),
            "sft": _t(S),
            "models": _map(_obj(_MODEL | {"input": _t(S)})),
            "calib": _t(S),
            "samples": _t(INT),
            "response_tokens": _t(INT),
            "max_tokens": _t(INT),
            "batches": _t(INT),
            "batch_tokens": _t(INT),
            "device": _t(S),
            "dtype": _t(S),
            "max_memory": _t(INT, "null"),
            "offloaded": _t(B),
            "checkable": _t(INT, "null"),
        }  # fmt: skip
    )
    settings = _obj(
        {
            "alphas": _list(_t(N)),
            "recipe": _record("the recipe in effect"),
            "recipe_source": _t(S, "null"),
            "min_skill": _t(N),
            "generate": _t(B),
            "group_size": _t(INT, "null"),
            "max_new_tokens": _t(INT, "null"),
            "checker": _t(S, "null"),
        }
    )
    out = _obj({"path": _t(S), "alpha": _t(N), "command": _t(S), "shards": _t(INT),
                "bytes": _t(INT)}, null=True,
               desc="what --out wrote; null without --out or when no α is recommended")  # fmt: skip
    body = _obj(
        {
            "schema_version": {"const": VERSIONS["sweep"]},
            "tool": _t(S),
            "command": _t(S),
            "inputs": inputs,
            "settings": settings,
            "reset": _RESET,
            **_SWEEP_TABLE,
            "out": out,
            "warnings": _list(_t(S)),
            "weights_in_memory": _t(B),
            "seconds": _t(N),
        }
    )
    return _document("sweep", "rejuv sweep report",
                     "`rejuv sweep --json`: BASE, SFT and one candidate per α measured on the "
                     "calibration data, and the recommended α.", body)  # fmt: skip


# ---- rejuv.json -------------------------------------------------------------------------------
def rejuv_json_schema() -> dict:
    digest = _t(S, desc="xxh3-128 over every tensor read")
    model = _obj(_MODEL | {"input": _record("the input format's facts"), "tensor_digest": digest})
    counts = _obj({k: _t(INT) for k in ("tensors", "fused", "from_base", "from_sft", "copied",
                   "reset", "sft_only", "base_only_dropped", "added_token_rows", "shards")},
                  open_=True)  # fmt: skip
    tensor = _obj({"action": _t(S), "alpha": _t(N, "null"), "alpha_source": _t(S, "null"),
                   "dtype": _t(S), "base_rows": _t(INT)},
                  required=("action", "alpha", "alpha_source", "dtype"))  # fmt: skip
    body = _obj(
        {
            "schema_version": {"const": VERSIONS["rejuv.json"]},
            "rejuv_version": _t(S),
            "command": _t(S, desc="the command line that wrote the checkpoint"),
            "inputs": _obj({"base": model, "sft": model}),
            "recipe": _record("the recipe in effect"),
            "recipe_source": _t(S, "null"),
            "counts": counts,
            "reset": _RESET,
            "out_dtypes": _map(_t(INT), desc="tensors per output dtype"),
            "shards": _list(_obj({"file": _t(S), "bytes": _t(INT), "tensors": _t(INT)})),
            "ranks": _obj(
                {"world_size": _t(INT), "shards": _map(_t(INT))},
                desc="torchrun runs only: the rank that wrote each shard",
            ),
            "warnings": _list(_t(S)),
            "seconds": _obj({k: _t(N) for k in ("plan", "score", "write", "total")}),
            "device": _t(S),
            "host": _record("Python and platform"),
            "tensors": _map(tensor, desc="every output tensor: what was done to it"),
            "sweep": _obj(
                _SWEEP_TABLE | {"settings": _record("the sweep's settings")},
                desc="written by `rejuv sweep --out`: how α was chosen",
            ),
        },
        required=(
            "schema_version",
            "rejuv_version",
            "command",
            "inputs",
            "recipe",
            "recipe_source",
            "counts",
            "reset",
            "out_dtypes",
            "shards",
            "warnings",
            "seconds",
            "device",
            "host",
            "tensors",
        ),  # fmt: skip
    )
    return _document("rejuv.json", "rejuv.json: provenance of a fused checkpoint",
                     "Written by `rejuv fuse` (and `rejuv sweep --out`) next to the shards: "
                     "inputs with digests, recipe, reset, shards and what was done to every "
                     "tensor.", body)  # fmt: skip


BUILDERS = {"diagnose": diagnose_schema, "sweep": sweep_schema, "rejuv.json": rejuv_json_schema}


def schema_file(name: str) -> str:
    """The file name a schema ships as, in rejuv_cli/schemas/."""
    return f"{name.removesuffix('.json')}.schema.json"


def render(name: str) -> str:
    """The schema as the file holds it: indented JSON, keys in declaration order, newline."""
    import json

    return json.dumps(BUILDERS[name](), indent=2, ensure_ascii=False) + "\n"
