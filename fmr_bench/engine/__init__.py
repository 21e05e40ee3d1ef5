"""Running things: one FMR run (:mod:`.fmr`), the judge that audits it (:mod:`.judge`),
class-space inference with its cache (:mod:`.logits`) and torchrun ranks (:mod:`.distributed`)."""
