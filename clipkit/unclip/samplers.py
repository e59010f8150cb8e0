"""Which sampler and noise schedule a trained unCLIP model samples with (from its config).

schedule = noise_schedule(decoder.config)                  # the schedule it was trained on
sampler = make_sampler("ddim", schedule, decoder.config.prediction, clip_x0=pixel_clip(decoder.config))
"""

from __future__ import annotations

from clipkit.diffusion import DDIMSampler, DDPMSampler, DynamicThreshold, FlowMatchSampler, NoiseSchedule

SAMPLERS = ("ddim", "ddpm", "flow")


def noise_schedule(config) -> NoiseSchedule:
    """The NoiseSchedule a decoder / prior / upsampler config was trained on."""
    return NoiseSchedule(
        config.schedule, num_train_timesteps=config.num_train_timesteps, shift=getattr(config, "schedule_shift", 1.0)
    )


def pixel_clip(config, dynamic_threshold=None):
    """The x0 clipping of a pixel model: `dynamic_threshold` (a percentile; False = the static clip) or
    the config's default; a percentile gives Imagen's DynamicThreshold, else x0 is clamped to [-1, 1]."""
    level = config.dynamic_threshold if dynamic_threshold is None else dynamic_threshold
    return DynamicThreshold(float(level)) if level else 1.0


def make_sampler(name: str, schedule: NoiseSchedule, prediction: str, clip_x0=1.0, timestep_spacing: str = "leading"):
    if name == "ddim":
        return DDIMSampler(
            schedule, eta=0.0, prediction_type=prediction, clip_x0=clip_x0, timestep_spacing=timestep_spacing
        )
    if name == "ddpm":
        return DDPMSampler(schedule, prediction_type=prediction, clip_x0=clip_x0, timestep_spacing=timestep_spacing)
    if name == "flow":
        return FlowMatchSampler(clip_x0=clip_x0)
    raise ValueError(f"sampler={name!r} is not one of {SAMPLERS}")
