"""mgen.eval: FID / IS / KID / precision-recall on torch-fidelity's Inception, and digits metrics."""

__all__: list[str] = []
