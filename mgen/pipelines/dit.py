"""Class-conditional latent diffusion with a DiT: noise → (DDPM/DDIM sampler) → latents → VAE → images.

The call signature is diffusers' ``DiTPipeline`` (``class_labels, guidance_scale, generator,
num_inference_steps, output_type, return_dict``); guidance is the official DiT ``forward_with_cfg``
(Peebles & Xie 2023), the decoder divides by the tokenizer's scaling factor (0.18215 for the SD-VAE).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from mgen.errors import UserError
from mgen.samplers.ddpm import DDPMSampler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images in [-1, 1] through an mgen tokenizer or a diffusers ``AutoencoderKL``."""
    sf = vars(vae).get("scaling_factor")  # mgen tokenizers keep it as an attribute
    if sf is None:  # diffusers AutoencoderKL keeps it in its config
        sf = getattr(getattr(vae, "config", None), "scaling_factor", None) or 1.0
    z = latents / float(sf)
    param = next(vae.parameters(), None)
    if param is not None:
        z = z.to(param.dtype)
    out = vae.decode(z)
    if hasattr(out, "sample"):  # diffusers AutoencoderKL returns DecoderOutput
        out = out.sample
    return out.float().clamp(-1, 1)


def format_images(images: torch.Tensor, output_type: str) -> Any:
    """Images in [-1, 1] → diffusers' output formats ("pt"/"np" in [0, 1], "pil")."""
    x = (images / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "np":
        return arr
    return DiffusionPipeline.numpy_to_pil(arr)


class DiTPipeline(DiffusionPipeline):
    """DiT + tokenizer (VAE) + DDPM/DDIM sampler behind diffusers' ``DiTPipeline.__call__``."""

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, sampler: DDPMSampler | None = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)
        self.sampler = sampler or DDPMSampler()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "dit-xl-2", weights: str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | torch.nn.Module | None = None, config: str | None = None,
                        device: str | torch.device = "cpu", **sampler_overrides: Any) -> "DiTPipeline":
        """A registry name (``dit-xl-2``, ``dit-digits``) or a checkpoint path (+ ``config``), its
        tokenizer (the config's ``tokenizer``, e.g. ``sd-vae-ft-ema``, unless given) and sampler settings."""
        from mgen import registry
        from mgen.models.dit import DiT

        entry = None
        if not os.path.exists(os.fspath(model)):
            entry = registry.get(str(model))
        elif config is not None:
            entry = registry.get(config) if not str(config).endswith((".yaml", ".yml")) else registry.load_config_file(config)
        transformer = DiT.from_pretrained(model, config=config or (entry.name if entry else None), weights=weights)
        tok = tokenizer if tokenizer is not None else (entry.tokenizer if entry else None)
        if tok is None:
            raise UserError("no tokenizer: pass tokenizer= (e.g. sd-vae-ft-ema or a VAE folder)")
        vae = load_vae(tok, tokenizer_family(entry)) if not isinstance(tok, torch.nn.Module) else tok
        sampler = DDPMSampler.from_mapping(dict(entry.sampler) if entry else {}, **sampler_overrides)
        pipe = cls(transformer.eval(), vae.eval(), sampler)
        return pipe.to(device)

    def run_sampler(self, sampler: Any, class_labels: Any, generator: torch.Generator | None,
                    latents: torch.Tensor | None) -> torch.Tensor:
        return sampler.sample(self.transformer, class_labels, generator=generator, latents=latents)

    def to(self, *args: Any, **kwargs: Any) -> "DiTPipeline":
        """Move the transformer and the VAE (``pipe.to("cuda")``, ``pipe.to(dtype=torch.bfloat16)``)."""
        for module in (self.transformer, self.vae):
            module.to(*args, **kwargs)
        return self

    @property
    def num_classes(self) -> int:
        return int(self.transformer.config.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        method: str | None = None,
        latents: torch.Tensor | None = None,
        temperature: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per class label. ``None`` settings fall back to the model's config
        (DiT-XL/2: 250 DDPM steps, guidance 1.5). ``output_type``: pil, np, pt or latent."""
        if temperature is not None:
            raise UserError(f"{type(self).__name__} has no temperature setting (it samples a diffusion / flow ODE)")
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        overrides = dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, method=method)
        sampler = dataclasses.replace(self.sampler, **{k: v for k, v in overrides.items() if v is not None})
        sampler.validate()
        lat = self.run_sampler(sampler, class_labels, generator, latents)
        if output_type == "latent":
            images: Any = lat
        else:
            images = format_images(decode_latents(self.vae, lat), output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def load_vae(name_or_path: str | os.PathLike, family: str | None = None) -> torch.nn.Module:
    """The tokenizer (KL-VAE or RAE) from a registry name or a path (``family`` says which, for paths)."""
    from mgen.models.dit import load_tokenizer

    return load_tokenizer(name_or_path, family)


def tokenizer_family(entry: Any) -> str | None:
    """The family (kl / rae) of the tokenizer a generator config names, if it is registered."""
    from mgen import registry

    if entry is None or not entry.tokenizer:
        return None
    try:
        return registry.get(entry.tokenizer).family
    except UserError:
        return None


# -- `mgen bench sample` for the dit / rae-dit families ----------------------------------------------

def bench_sample(args: Any) -> dict[str, Any]:
    """Time ``DiTPipeline`` / ``RAEDiTPipeline`` sampling once per attention backend (sdpa, math and
    xformers when installed): images/s and seconds per sampler step for each, in one flat record.

    ``--random-weights`` builds the named config with random weights (no files; timing stops at the
    latents, no decoding); otherwise the pipeline is loaded as by ``mgen sample`` and images are decoded.
    """
    import contextlib
    import platform
    import time

    from mgen.nn.attention import available_backends, resolve_backend
    from mgen.pipelines import family_of, load_pipeline

    if not 1 <= args.steps <= 256:
        raise UserError(f"--steps must be in 1..256, got {args.steps}")
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError("--batch-size and --repeats must be >= 1")
    backends = list(getattr(args, "attn_backends", None) or available_backends())
    for b in backends:
        if b == "auto":
            raise UserError("--attn-backends: name concrete backends (sdpa, math, xformers)")
        resolve_backend(b)  # unknown or unavailable backend -> one clear line
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    family, entry = family_of(args.model)
    if args.random_weights:
        if entry is None:
            raise UserError("--random-weights needs a registered model name (e.g. dit-xl-2, rae-dit-xl)")
        torch.manual_seed(args.seed)
        if family == "dit":
            from mgen.models.dit import DiT, DiTConfig

            model: torch.nn.Module = DiT(DiTConfig.from_mapping(entry.arch, where=entry.path))
            pipe: Any = DiTPipeline(model.eval(), torch.nn.Identity(), DDPMSampler.from_mapping(dict(entry.sampler)))
        else:
            from mgen.models.lightningdit import LightningDiT, LightningDiTConfig
            from mgen.pipelines.rae_dit import RAEDiTPipeline
            from mgen.samplers.flow import FlowSampler

            model = LightningDiT(LightningDiTConfig.from_mapping(entry.arch, where=entry.path))
            pipe = RAEDiTPipeline(model.eval(), torch.nn.Identity(), FlowSampler.from_mapping(dict(entry.sampler)))
        pipe.to(device)
        out_type = "latent"
    else:
        pipe = load_pipeline(args.model, weights=args.weights, tokenizer_weights=args.tokenizer_weights, device=device)
        out_type = "pt"
    labels = torch.arange(args.batch_size) % int(pipe.num_classes)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    kwargs: dict[str, Any] = {"num_inference_steps": args.steps, "output_type": out_type}
    if args.cfg is not None:
        kwargs["guidance_scale"] = args.cfg
    sampler = dataclasses.replace(pipe.sampler, **{k: v for k, v in kwargs.items() if k != "output_type"})
    n_evals = args.steps - 1 if getattr(sampler, "time_grid", "uniform") == "rae" else args.steps  # sampler steps

    def once(seed: int) -> float:
        g = torch.Generator(device=device).manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            pipe(class_labels=labels.to(device), generator=g, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    result: dict[str, Any] = {
        "bench": "sample", "model": args.model, "pipeline": type(pipe).__name__, "random_weights": bool(args.random_weights),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": args.dtype, "batch_size": args.batch_size, "steps": args.steps,
        "sampler_steps": n_evals, "method": getattr(sampler, "method", None), "cfg": sampler.guidance_scale,
        "repeats": args.repeats, "decoded": out_type != "latent",
    }
    previous = pipe.transformer.attn_backend
    try:
        for b in backends:
            pipe.transformer.attn_backend = b
            once(args.seed)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            total = sum(once(args.seed + 1 + i) for i in range(args.repeats)) / args.repeats
            result[f"{b}_seconds_per_batch"] = round(total, 4)
            result[f"{b}_images_per_s"] = round(args.batch_size / total, 3)
            result[f"{b}_seconds_per_step"] = round(total / max(1, n_evals), 5)
            if device.type == "cuda":
                result[f"{b}_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    finally:
        pipe.transformer.attn_backend = previous
    if device.type != "cuda":
        import resource

        result["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result
