"""Diffusion core: processes, samplers, one guided sampling loop, one parameterization helper.

The model contract: `model_fn(x, t, cond) -> out`, out shaped like x (names.py lists what out may be).
  x     (B, *shape) noisy samples (pixels, embeddings, 2-D points ...)
  t     (B,) model time: long timesteps 0..N-1 on a NoiseSchedule (DDPM / DDIM), float sigma in
        [0, 1] on a FlowProcess (FlowMatchSampler); `timestep_embedding` embeds either
  cond  a tensor, a dict or tuple of tensors, or None; under guidance the loop passes cond and
        uncond concatenated along the batch (B = 2 x batch)

    from clipkit.diffusion import NoiseSchedule, DDIMSampler, FlowProcess, FlowMatchSampler, sample, diffusion_loss
    schedule = NoiseSchedule("cosine", num_train_timesteps=1000)     # or FlowProcess() (velocity target)
    null = torch.nn.Parameter(torch.zeros(cond_dim))                 # the learned "no condition"
    loss = diffusion_loss(model, schedule, x0, cond, prediction_type="epsilon", p_uncond=0.1, null_cond=null)
    # by hand: xt, t, target = training_batch(schedule, x0, "epsilon"); cond = drop_condition(cond, 0.1, null)
    sampler = DDIMSampler(schedule, eta=0.0, prediction_type="epsilon", clip_x0=1.0)   # 1.0: pixels in [-1, 1]
    x = sample(model, (16, 3, 32, 32), sampler, steps=50, cond=c, uncond=null[None],
               guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    # DDPMSampler(schedule) with steps=1000 is the ancestral sampler; FlowMatchSampler() samples a
    # FlowProcess model, or FlowAdapter(model, schedule, prediction_type) a NoiseSchedule one

`to_x0_eps` / `from_x0_eps` convert between model outputs and (x0, noise). Names load lazily:
`clipkit.diffusion.names` (the vocabulary) imports without torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy names, typed for type checkers (exported through __all__)
    from clipkit.diffusion.base import DiscreteSampler, DynamicThreshold, Sampler, spaced_timesteps  # noqa: F401
    from clipkit.diffusion.ddim import DDIMSampler  # noqa: F401
    from clipkit.diffusion.ddpm import DDPMSampler  # noqa: F401
    from clipkit.diffusion.embedding import timestep_embedding  # noqa: F401
    from clipkit.diffusion.flow import FlowAdapter, FlowMatchSampler, FlowProcess  # noqa: F401
    from clipkit.diffusion.names import PREDICTION_TYPES, SCHEDULE_KINDS, check_prediction_type  # noqa: F401
    from clipkit.diffusion.parameterization import from_x0_eps, to_x0_eps  # noqa: F401
    from clipkit.diffusion.sampling import Trajectory, sample  # noqa: F401
    from clipkit.diffusion.schedule import NoiseSchedule  # noqa: F401
    from clipkit.diffusion.training import diffusion_loss, drop_condition, loss_weights, training_batch, weighted_mse  # noqa: F401

_EXPORTS = {
    "NoiseSchedule": "schedule",
    "FlowProcess": "flow",
    "FlowMatchSampler": "flow",
    "FlowAdapter": "flow",
    "Sampler": "base",
    "DiscreteSampler": "base",
    "spaced_timesteps": "base",
    "DDPMSampler": "ddpm",
    "DDIMSampler": "ddim",
    "sample": "sampling",
    "Trajectory": "sampling",
    "training_batch": "training",
    "diffusion_loss": "training",
    "drop_condition": "training",
    "loss_weights": "training",
    "weighted_mse": "training",
    "DynamicThreshold": "base",
    "to_x0_eps": "parameterization",
    "from_x0_eps": "parameterization",
    "timestep_embedding": "embedding",
    "PREDICTION_TYPES": "names",
    "SCHEDULE_KINDS": "names",
    "check_prediction_type": "names",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"clipkit.diffusion.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'clipkit.diffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
