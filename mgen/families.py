"""The table of model families: the only place in mgen where a family is named.

Every family says which classes implement it, as ``"module:attribute"`` strings that are imported only when
used (so this module sits at the bottom of the layers and imports nothing of mgen's above it):

* ``model``: the generator or tokenizer class (a diffusers ``ModelMixin + ConfigMixin``);
* ``sampler``: the default decoding algorithm (``mgen.samplers``);
* ``pipeline``: the diffusers pipeline class that puts a tokenizer, the model and the sampler together;
* ``train``: the training builder ``builder(entry, **overrides) -> Trainer`` (the model's loss plugs into the one
  trainer of ``mgen.train``);
* ``tokenizers``: the tokenizer families whose outputs the generator models (checked when a pipeline is built);
* ``converters``: ``mgen convert`` kinds, ``kind -> (description, "module:function")``;
* ``recap``: whether ReCAP context-feature reuse can drive it;
* ``detect``: for tokenizers read from bare official files, a ``looks_like(state_dict) -> bool`` function.

The registry (``configs/*.yaml``) validates ``family:`` against this table; pipeline dispatch, the resolver
(``mgen.resolver``), the trainer, ``mgen convert``, ``mgen bench``, ReCAP and ``mgen info`` all read it. Adding a
family is one entry here plus its config, its model file and (if the decoding is new) its sampler
(docs/ARCHITECTURE.md, "Adding a family").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from mgen.errors import UserError

GENERATOR = "generator"  # image generator: tokens/latents → tokenizer.decode → images
TEXT = "text"  # text generator (masked diffusion LM)
SAMPLER_LAYER = "sampler-layer"  # a learned sampler on top of a text generator (ADJUST)
TOKENIZER = "tokenizer"  # image tokenizer


@dataclass(frozen=True)
class Family:
    """One family of models and the classes that implement it (import strings, resolved on use)."""

    name: str
    kind: str
    model: str
    description: str = ""
    sampler: str | None = None
    pipeline: str | None = None
    train: str | None = None
    tokenizers: tuple[str, ...] = ()
    converters: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    recap: bool = False
    detect: str | None = None
    #: other class names (e.g. diffusers' or transformers') whose saved folders this family's model reads
    reads_classes: tuple[str, ...] = ()
    #: other names a weights file's metadata (``mgen_family``) may give this family (older mgen files)
    aliases: tuple[str, ...] = ()

    @property
    def is_tokenizer(self) -> bool:
        return self.kind == TOKENIZER

    @property
    def is_generator(self) -> bool:
        return self.kind in (GENERATOR, TEXT, SAMPLER_LAYER)

    @property
    def model_class_name(self) -> str:
        return self.model.rpartition(":")[2]

    @property
    def pipeline_class_name(self) -> str | None:
        return self.pipeline.rpartition(":")[2] if self.pipeline else None

    def model_class(self) -> type:
        return import_target(self.model)

    def sampler_class(self) -> type:
        if self.sampler is None:
            raise UserError(f"the {self.name!r} family has no sampler")
        return import_target(self.sampler)

    def pipeline_class(self) -> type:
        if self.pipeline is None:
            raise UserError(f"{self.name!r} models are not sampled on their own ({self.description or self.kind})")
        return import_target(self.pipeline)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # -- image generators ---------------------------------------------------------------------------------------
    Family("mar", GENERATOR, "mgen.models.mar:MAR",
           "MAR: masked autoregressive transformer + diffusion-loss head (Li et al. 2024)",
           sampler="mgen.samplers.mar:MARSampler", pipeline="mgen.pipelines.mar:MARPipeline",
           train="mgen.models.mar:build_mar_training", tokenizers=("kl", "patch"),
           converters={"mar": ("LTH14/mar checkpoint-last.pth -> MARPipeline folder (EMA; --opt config=mar-b "
                               "--opt tokenizer=kl16.ckpt)", "mgen.pipelines.mar:convert_official_checkpoint")},
           recap=True),
    Family("maskgit", GENERATOR, "mgen.models.maskgit:MaskGITTransformer",
           "MaskGIT: bidirectional transformer over VQ codes (Chang et al. 2022)",
           sampler="mgen.samplers.maskgit:MaskGITSampler", pipeline="mgen.pipelines.maskgit:MaskGITPipeline",
           train="mgen.models.maskgit:build_maskgit_training", tokenizers=("vq",),
           converters={"maskgit": ("valeoai/Maskgit-pytorch MaskGIT_ImageNet_256.pth -> MaskGIT safetensors folder",
                                   "mgen.models.maskgit:convert_checkpoint")},
           recap=True),
    Family("enat", GENERATOR, "mgen.models.enat:ENAT",
           "ENAT: non-autoregressive transformer with feature reuse across steps (Ni et al. 2024)",
           sampler="mgen.samplers.enat:ENATSampler", pipeline="mgen.pipelines.enat:ENATPipeline",
           train="mgen.models.enat:build_enat_training", tokenizers=("vq", "maskgit-jax-vq"),
           converters={"enat": ("LeapLabTHU/ENAT nnet_ema.pth -> ENAT safetensors folder (--opt config=enat-l)",
                                "mgen.models.enat:convert_checkpoint")},
           recap=False),  # ENAT reuses features across steps itself; ReCAP's cache does not apply
    Family("dit", GENERATOR, "mgen.models.dit:DiT",
           "DiT: diffusion transformer on KL-VAE latents, DDPM/DDIM sampling (Peebles & Xie 2023)",
           sampler="mgen.samplers.ddpm:DDPMSampler", pipeline="mgen.pipelines.dit:DiTPipeline",
           train="mgen.models.dit:build_dit_training", tokenizers=("kl",),
           reads_classes=("DiTTransformer2DModel",)),
    Family("rae-dit", GENERATOR, "mgen.models.lightningdit:LightningDiT",
           "DiT^DH / LightningDiT on representation-autoencoder latents, flow matching (Zheng et al. 2025)",
           sampler="mgen.samplers.flow:FlowSampler", pipeline="mgen.pipelines.rae_dit:RAEDiTPipeline",
           train="mgen.models.lightningdit:build_flow_training", tokenizers=("rae", "kl")),
    # -- text --------------------------------------------------------------------------------------------------
    Family("dlm", TEXT, "mgen.models.dlm:MaskedDiffusionLM",
           "masked diffusion language model (MDLM / LLaDA objective; LLaDA, Dream, HF masked LMs through adapters)",
           sampler="mgen.samplers.dlm:LLaDASampler", pipeline="mgen.pipelines.dlm:DLMPipeline",
           train="mgen.models.dlm:build_dlm_training", tokenizers=("text",)),
    Family("joint-dlm", SAMPLER_LAYER, "mgen.models.joint_sampler:JointSamplerLayer",
           "ADJUST approximate-joint sampler layer on a frozen masked diffusion LM (Bansal & Sanghavi 2025)",
           sampler="mgen.samplers.joint:JointSampler", pipeline="mgen.pipelines.dlm:DLMPipeline",
           train="mgen.models.joint_sampler:build_joint_training", tokenizers=("text",), aliases=("joint-sampler",)),
    # -- tokenizers --------------------------------------------------------------------------------------------
    Family("kl", TOKENIZER, "mgen.tokenizers.kl:KLTokenizer", "KL-regularised VAE (LDM / SD-VAE / MAR's KL-16)",
           train="mgen.tokenizers.kl:build_kl_training", detect="mgen.tokenizers.kl:looks_like",
           converters={"kl16": ("MAR's official LDM KL-16 VAE kl16.ckpt -> KLTokenizer safetensors folder",
                                "mgen.tokenizers.kl:convert_ldm_checkpoint")},
           reads_classes=("AutoencoderKL",)),
    Family("vq", TOKENIZER, "mgen.tokenizers.vq:VQTokenizer", "VQGAN (taming / valeoai MaskGIT layout)",
           train="mgen.tokenizers.vq:build_vq_training", detect="mgen.tokenizers.vq:looks_like",
           converters={"maskgit-vqgan": ("valeoai/Maskgit-pytorch VQGAN last.ckpt -> VQTokenizer safetensors folder",
                                         "mgen.tokenizers.vq:convert_maskgit_vqgan")},
           reads_classes=("VQModel",)),
    Family("maskgit-jax-vq", TOKENIZER, "mgen.tokenizers.maskgit_jax_vq:MaskGITJaxVQTokenizer",
           "MaskGIT (JAX) VQGAN as used by ENAT and MAGE",
           detect="mgen.tokenizers.maskgit_jax_vq:looks_like",
           converters={"maskgit-vqgan-jax": ("MaskGIT (JAX) VQGAN vqgan_jax_strongaug.ckpt (ENAT, MAGE) -> "
                                             "MaskGITJaxVQTokenizer safetensors folder",
                                             "mgen.tokenizers.maskgit_jax_vq:convert_maskgit_jax_vqgan")}),
    Family("rae", TOKENIZER, "mgen.tokenizers.rae:RAETokenizer",
           "representation autoencoder: frozen ViT encoder + trained ViT decoder (Zheng et al. 2025)",
           train="mgen.tokenizers.rae:build_rae_training",
           converters={"rae": ("bytetriper/RAE decoder model.pt -> RAETokenizer folder (--opt encoder=DIR --opt "
                               "decoder_config=DIR [--opt stats=stat.pt --opt encoder_input_size=224])",
                               "mgen.tokenizers.rae:convert_official_rae")},
           reads_classes=("AutoencoderRAE",)),
    Family("patch", TOKENIZER, "mgen.tokenizers.patch:PatchTokenizer", "parameter-free pixel patch tokenizer"),
)}


def import_target(target: str) -> Any:
    """``"module:attribute"`` → the attribute (imported on first use)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_family(name: str) -> Family:
    """The family called ``name``; an unknown name is a one-line :class:`UserError` listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def family_of_class(class_name: str | None) -> Family | None:
    """The family whose model or pipeline class is called ``class_name`` (a saved folder's ``_class_name``)."""
    if not class_name:
        return None
    for f in FAMILIES.values():
        if class_name in (f.model_class_name, f.pipeline_class_name) or class_name in f.reads_classes:
            return f
    return None


def family_of_tag(tag: str | None) -> Family | None:
    """The family a weights file's metadata names (its name or one of its aliases)."""
    for f in FAMILIES.values():
        if tag == f.name or tag in f.aliases:
            return f
    return None


def converters() -> dict[str, tuple[str, str]]:
    """Every ``mgen convert`` kind: ``kind -> (description, "module:function")``, in table order."""
    out: dict[str, tuple[str, str]] = {}
    for f in FAMILIES.values():
        out.update(f.converters)
    return out


def with_recap() -> tuple[str, ...]:
    """The families ReCAP can drive."""
    return tuple(f.name for f in FAMILIES.values() if f.recap)
