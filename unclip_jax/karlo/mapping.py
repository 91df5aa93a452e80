"""Parameter-name maps from Karlo's diffusers components to our modules.

Each `*_name(path, ndim)` takes a leaf path of our params tree and returns
`(component, diffusers_name, transform)` for `weights.fill`, or None for a leaf that has no
source tensor (filled by the converter).

Prior (`unclip_jax.models.prior.DiffusionPrior` ← diffusers `PriorTransformer`):
  cond/text_proj ← encoder_hidden_states_proj     cond/z_t_proj ← embedding_proj
  time_mlp/fc1,fc2 ← time_embedding.linear_1,2    x_proj ← proj_in
  query ← prd_embedding [1,1,W]                   stack/pos_embed ← positional_embedding [1,S,W]
  stack/norm_in ← norm_in                         stack/final_ln ← norm_out
  stack/transformer/layers_i/{layer_norm1, self_attn/{q,k,v,out}_proj, layer_norm2, mlp/fc1,fc2}
     ← transformer_blocks.i.{norm1, attn1.to_{q,k,v,out.0}, norm3, ff.net.0.proj, ff.net.2}
  out_proj ← proj_to_clip_embeddings              cond/null_text, cond/null_z_t: no source

Decoder (`unclip_jax.models.unet.UNet` ← decoder `UNet2DConditionModel` + `UnCLIPTextProjModel`):
  the UNet tree follows diffusers' names (see `weights.diffusers_name`); the conditioning
  projections come from text_proj:
  image_embed_proj ← clip_image_embeddings_project_to_time_embeddings
  text_embed_proj ← embedding_proj                clip_tokens_proj ← clip_extra_context_tokens_proj
  text_proj ← encoder_hidden_states_proj          text_norm ← text_encoder_hidden_states_norm
  null_image_embed ← learned_classifier_free_guidance_embeddings
"""
from __future__ import annotations

from unclip_jax.karlo.weights import diffusers_name

PRIOR_RENAMES = (
    ("cond.text_proj.", "encoder_hidden_states_proj."),
    ("cond.z_t_proj.", "embedding_proj."),
    ("time_mlp.fc1.", "time_embedding.linear_1."),
    ("time_mlp.fc2.", "time_embedding.linear_2."),
    ("x_proj.", "proj_in."),
    ("query", "prd_embedding"),
    ("stack.pos_embed", "positional_embedding"),
    ("stack.norm_in.", "norm_in."),
    ("stack.final_ln.", "norm_out."),
    ("stack.transformer.layers.", "transformer_blocks."),
    ("out_proj.", "proj_to_clip_embeddings."),
)
PRIOR_BLOCK_RENAMES = (
    (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm3."),
    (".self_attn.q_proj.", ".attn1.to_q."), (".self_attn.k_proj.", ".attn1.to_k."),
    (".self_attn.v_proj.", ".attn1.to_v."), (".self_attn.out_proj.", ".attn1.to_out.0."),
    (".mlp.fc1.", ".ff.net.0.proj."), (".mlp.fc2.", ".ff.net.2."),
)
PRIOR_SYNTHESIZED = (("cond", "null_text"), ("cond", "null_z_t"))

TEXT_PROJ_RENAMES = (
    ("image_embed_proj.", "clip_image_embeddings_project_to_time_embeddings."),
    ("text_embed_proj.", "embedding_proj."),
    ("clip_tokens_proj.", "clip_extra_context_tokens_proj."),
    ("text_proj.", "encoder_hidden_states_proj."),
    ("text_norm.", "text_encoder_hidden_states_norm."),
    ("null_image_embed", "learned_classifier_free_guidance_embeddings"),
)


def _rename(name: str, renames) -> str | None:
    for ours, theirs in renames:
        if name == ours or name.startswith(ours):
            return theirs + name[len(ours):]
    return None


def prior_name(path: tuple, ndim: int):
    if tuple(path) in PRIOR_SYNTHESIZED:
        return None
    name, transform = diffusers_name(path, ndim)
    theirs = _rename(name, PRIOR_RENAMES)
    if theirs is None:
        return "prior", name, transform
    if theirs.startswith("transformer_blocks."):
        theirs = _rename(theirs[theirs.index(".", len("transformer_blocks.")):],
                         PRIOR_BLOCK_RENAMES)
        theirs = ("transformer_blocks." + path[2].split("_")[1] + theirs) if theirs else None
        if theirs is None:
            return "prior", name, transform
    return "prior", theirs, transform


def decoder_name(path: tuple, ndim: int):
    name, transform = diffusers_name(path, ndim)
    theirs = _rename(name, TEXT_PROJ_RENAMES)
    if theirs is not None:
        return "text_proj", theirs, transform
    return "decoder", name, transform


def super_res_name(component: str):
    def name_fn(path: tuple, ndim: int):
        name, transform = diffusers_name(path, ndim)
        return component, name, transform
    return name_fn
