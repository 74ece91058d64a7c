"""Generators (DESIGN.md): MaskGIT, MAR + diffusion-loss head, ENAT, DiT + DDT head, diffusion LMs."""
