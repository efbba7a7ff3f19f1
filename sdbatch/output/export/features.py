"""Arrow types as a dataset card's `dataset_info.features` (the YAML form `datasets` writes and reads)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

# Arrow names that `datasets` spells otherwise; the other types it takes keep Arrow's name (int64, string, ...).
RENAMED = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64", pa.date32(): "date32",
           pa.date64(): "date64"}
PLAIN = (pa.types.is_integer, pa.types.is_boolean, pa.types.is_string, pa.types.is_large_string,
         pa.types.is_binary, pa.types.is_large_binary, pa.types.is_null, pa.types.is_timestamp)


def yaml_features(schema: pa.Schema, images: tuple[str, ...] = ("image",)) -> list[dict[str, Any]] | None:
    """The card's features of these columns, `images` as Image; None where a type has no spelling here, so
    `datasets` infers every feature from the data files instead of being told a wrong one."""
    features = []
    for field in schema:
        feature = {"dtype": "image"} if field.name in images else yaml_feature(field.type)
        if feature is None:
            return None
        features.append({"name": field.name, **feature})
    return features


def yaml_feature(kind: pa.DataType) -> dict[str, Any] | None:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = yaml_feature(kind.value_type)
        if inner is None:
            return None
        # As datasets simplifies them: `list: string` for values, `list: [fields]` for structs.
        simple = inner[next(iter(inner))] if list(inner) in (["dtype"], ["struct"]) else inner
        return {"list" if pa.types.is_list(kind) else "large_list": simple}
    if pa.types.is_struct(kind):
        fields = [{"name": field.name, **feature} for field in kind
                  if (feature := yaml_feature(field.type)) is not None]
        return {"struct": fields} if len(fields) == kind.num_fields else None
    if kind in RENAMED:
        return {"dtype": RENAMED[kind]}
    if any(test(kind) for test in PLAIN):
        return {"dtype": str(kind)}
    return None
