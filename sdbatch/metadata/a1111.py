"""A1111, Forge and sdbatch's own images: the `parameters` text, read by sdbatch's A1111 reader."""

from __future__ import annotations

from sdbatch.a1111.parameters import SDBATCH_KEY, parse_parameters, row_from_parameters, unused_fields
from sdbatch.metadata.image import ImageTexts
from sdbatch.metadata.reading import Reading


class A1111:
    name = "A1111"

    def claims(self, image: ImageTexts) -> bool:
        text = image.texts.get("parameters", "")
        return bool(text.strip()) and not text.lstrip().startswith("{")  # Fooocus writes JSON under this key

    def read(self, image: ImageTexts) -> Reading:
        fields = parse_parameters(image.texts["parameters"])
        row = row_from_parameters(fields)
        unrendered = unused_fields(fields)
        sampler = fields.get("Sampler")
        if sampler and row.get("scheduler") is None and SDBATCH_KEY not in fields:
            schedule = fields.get("Schedule type")
            unrendered.append(f"Sampler ({sampler}{f', {schedule}' if schedule else ''})")
        if "VAE" in unrendered:
            row["vae_name"] = fields["VAE"]  # from_images renders it where --vae-dir holds it
        generator = "sdbatch" if SDBATCH_KEY in fields else "A1111"
        return Reading(generator, row, unrendered)
