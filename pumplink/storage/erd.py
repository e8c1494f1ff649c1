"""The entity-relationship diagram of the models, as Mermaid text (``python -m pumplink.storage.erd``).

docs/erd.md is this module's output; tests/storage/test_erd.py fails when the two disagree, so the
diagram cannot drift from the models.
"""

from __future__ import annotations

import peewee as pw

from pumplink.storage import models as m

_TYPES = [
    (pw.AutoField, "int"), (pw.ForeignKeyField, "int"), (pw.BooleanField, "bool"), (pw.IntegerField, "int"),
    (pw.FloatField, "float"), (pw.DateTimeField, "datetime"), (pw.TextField, "text"), (pw.CharField, "string"),
]


def _type(field: pw.Field) -> str:
    for cls, name in _TYPES:
        if isinstance(field, cls):
            return name
    return type(field).__name__.replace("Field", "").lower() or "value"


def _notes(field: pw.Field) -> str:
    keys = []
    if field.primary_key:
        keys.append("PK")
    if isinstance(field, pw.ForeignKeyField):
        keys.append("FK")
    if field.unique and not field.primary_key:
        keys.append("UK")
    parts = [",".join(keys)] if keys else []
    if field.null and not field.primary_key:
        parts.append('"nullable"')
    return " ".join(parts)


def mermaid(models=None) -> str:
    models = [x for x in (models or m.MODELS) if x is not m.SchemaVersion]
    lines = ["erDiagram"]
    for model in models:
        lines.append(f"    {model._meta.table_name} {{")
        for field in model._meta.sorted_fields:
            notes = _notes(field)
            lines.append(f"        {_type(field)} {field.column_name}{' ' + notes if notes else ''}")
        lines.append("    }")
    for model in models:
        for field in model._meta.sorted_fields:
            if isinstance(field, pw.ForeignKeyField):
                many = model._meta.table_name
                one = field.rel_model._meta.table_name
                left = "|o" if field.null else "||"
                lines.append(f'    {one} {left}--o{{ {many} : "{field.column_name}"')
    return "\n".join(lines) + "\n"


def document() -> str:
    return (
        "# Entity-relationship diagram\n\n"
        "Generated from `pumplink/storage/models.py` by `python -m pumplink.storage.erd > docs/erd.md`; a test fails when the\n"
        "models and this diagram disagree. `||--o{` reads \"one to many\"; `|o--o{` is an optional (nullable)\n"
        "reference. Times are naive UTC.\n\n"
        "```mermaid\n" + mermaid() + "```\n"
    )


if __name__ == "__main__":
    print(document(), end="")
