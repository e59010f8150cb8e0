"""Diffusion core: noise schedules, DDPM / DDIM / flow-matching samplers, one guided sampling loop.

The model contract: `model_fn(x, t, cond) -> out`, out shaped like x.
  x     (B, *shape) noisy samples (pixels, embeddings, 2-D points ...)
  t     (B,) model time: long timesteps 0..N-1 for a NoiseSchedule (DDPM / DDIM),
        float sigma in [0, 1] for flow matching ("flow"); `timestep_embedding` embeds either
  cond  whatever you pass as `cond` (a tensor, a dict or tuple of tensors, or None); under
        guidance the loop passes cond and uncond concatenated along the batch (B = 2 x batch)
  out   the prediction_type the sampler expects: "epsilon" (default), "sample" (x0) or "v";
        always the velocity (noise - x0) for flow matching

Train (discrete diffusion, epsilon prediction, 10% condition dropout to a learned null):

    from clipkit.diffusion import NoiseSchedule, DDPMSampler, DDIMSampler, sample, diffusion_loss
    schedule = NoiseSchedule("cosine", num_train_timesteps=1000)
    null = torch.nn.Parameter(torch.zeros(cond_dim))               # part of the model's parameters
    loss = diffusion_loss(model, schedule, x0, cond, prediction_type="epsilon",
                          p_uncond=0.1, null_cond=null)             # MSE; backward() as usual
    # or by hand: xt, t, target = training_batch(schedule, x0, "epsilon"); cond = drop_condition(cond, 0.1, null)

Sample (classifier-free guidance; uncond = the null, or a negative condition):

    sampler = DDIMSampler(schedule, eta=0.0, prediction_type="epsilon", clip_x0=1.0)   # 1.0: pixels in [-1, 1]
    x = sample(model, (16, 3, 32, 32), sampler, steps=50, cond=c, uncond=null[None],
               guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    # DDPMSampler(schedule) with steps=1000 is the ancestral sampler; embeddings: clip_x0=None

Flow matching: `diffusion_loss(model, "flow", x0, cond, ...)` trains on x_s = (1-s) x0 + s noise
with target noise - x0, and `sample(model, shape, FlowMatchSampler(), steps=16, ...)` samples it.
"""

from clipkit.diffusion.base import Sampler, spaced_timesteps
from clipkit.diffusion.ddim import DDIMSampler
from clipkit.diffusion.ddpm import DDPMSampler
from clipkit.diffusion.embedding import timestep_embedding
from clipkit.diffusion.flow import FlowMatchSampler
from clipkit.diffusion.sampling import Trajectory, sample
from clipkit.diffusion.schedule import PREDICTION_TYPES, SCHEDULE_KINDS, NoiseSchedule
from clipkit.diffusion.training import (diffusion_loss, drop_condition, sample_sigmas, sample_timesteps,
                                        training_batch)

__all__ = [
    "NoiseSchedule", "SCHEDULE_KINDS", "PREDICTION_TYPES",
    "Sampler", "DDPMSampler", "DDIMSampler", "FlowMatchSampler", "spaced_timesteps",
    "sample", "Trajectory",
    "training_batch", "diffusion_loss", "drop_condition", "sample_timesteps", "sample_sigmas",
    "timestep_embedding",
]
