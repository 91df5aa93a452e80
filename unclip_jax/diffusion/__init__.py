"""Pure-functional Gaussian diffusion: schedules, forward/posterior math, losses, samplers, guidance."""
from unclip_jax.diffusion.gaussian import (
    PREDICTIONS, VARIANCES, dynamic_threshold_x0, eps_to_x0, extract, p_mean_variance,
    predict_x0_eps, process_x0, q_posterior, q_sample, split_output, to_x0_eps, v_target,
    v_to_eps, v_to_x0, x0_to_eps)
from unclip_jax.diffusion.guidance import classifier_free_guidance
from unclip_jax.diffusion.losses import (
    LOSSES, discretized_gaussian_log_likelihood, normal_kl, prior_bits_per_dim,
    training_losses, vlb_bits_per_dim, vlb_terms)
from unclip_jax.diffusion.samplers import ddim_invert, ddim_sample, ddpm_sample
from unclip_jax.diffusion.schedules import (
    SCHEDULES, Schedule, from_config, make_betas, make_schedule, respace, schedule_from_betas,
    space_timesteps)

__all__ = [
    "PREDICTIONS", "VARIANCES", "LOSSES", "SCHEDULES", "Schedule", "make_betas", "make_schedule",
    "respace", "from_config", "schedule_from_betas", "space_timesteps", "extract", "q_sample",
    "q_posterior", "eps_to_x0", "x0_to_eps", "v_target", "v_to_x0", "v_to_eps", "to_x0_eps",
    "split_output", "process_x0", "dynamic_threshold_x0", "predict_x0_eps", "p_mean_variance",
    "normal_kl", "discretized_gaussian_log_likelihood", "vlb_terms", "prior_bits_per_dim",
    "training_losses", "vlb_bits_per_dim", "ddpm_sample", "ddim_sample", "ddim_invert",
    "classifier_free_guidance",
]
