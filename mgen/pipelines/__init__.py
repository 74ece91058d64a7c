"""diffusers pipelines: a tokenizer, a generator and its sampler settings behind one ``__call__``.

:func:`load_pipeline` turns any generator name or path into a ready pipeline: the resolver (:mod:`mgen.resolver`)
classifies it and the families table (:mod:`mgen.families`) names the pipeline class, whose ``from_spec`` builds
it (docs/ARCHITECTURE.md, "Resolver"). The classes: ``MARPipeline``, ``MaskGITPipeline``, ``ENATPipeline``,
``DiTPipeline``, ``RAEDiTPipeline`` (images) and ``DLMPipeline`` (text).
"""

from mgen.pipelines.loading import load_pipeline

__all__ = ["load_pipeline"]

