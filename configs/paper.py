"""unCLIP at the paper's sizes (arXiv 2204.06125, Appendix C, Table 3) on a TPU pod / GPU cluster.

`--config configs/paper.py:STAGE`, STAGE one of prior, ar_prior, decoder, upsampler1,
upsampler2, clip. CLIP is ViT-H/16-like (embedding 1024); text encoders for the priors use
context 256 / width 2048. Batch sizes are global. Compute in bfloat16, FSDP over the pod.
"""
import ml_collections as mlc

from unclip_jax import config_schema as common
from unclip_jax.configs import shapes

EMBED_DIM = 1024
TEXT_WIDTH = 1024      # CLIP text transformer width (ViT-H/16 CLIP)
TEXT_LEN = 77


def clip_model():
    cfg = shapes.clip_model()
    cfg.embed_dim = EMBED_DIM
    cfg.text.update(dict(vocab_size=49408, context_length=TEXT_LEN, width=TEXT_WIDTH, layers=24,
                         heads=16, activation="gelu", eos_token_id=49407, pad_token_id=49407))
    cfg.vision.update(dict(image_size=224, patch_size=14, width=1280, layers=32, heads=16,
                           activation="gelu"))
    cfg.dtype = "bfloat16"
    cfg.remat = True
    return cfg


def _big(cfg, fsdp=-1):
    with cfg.unlocked():
        cfg.mesh.data = 1
        cfg.mesh.fsdp = fsdp
        cfg.train.dtype = "bfloat16"
        cfg.model.dtype = "bfloat16"
        cfg.model.remat = True
        cfg.clip.model = clip_model()
    return cfg


def prior():
    cfg = shapes.prior()
    with cfg.unlocked():
        cfg.model.update(dict(width=2048, layers=24, heads=32, embed_dim=EMBED_DIM,
                              text_width=TEXT_WIDTH, text_len=TEXT_LEN))
        cfg.train.update(dict(batch_size=4096, steps=600_000, lr=1.1e-4, b2=0.96, eps=1e-6,
                              weight_decay=6e-2, ema_decay=0.9999, warmup=10_000))
        cfg.train.text_drop = 0.1
        cfg.diffusion.sample_steps = "64"
        cfg.data.image_size = 224
    return _big(cfg)


def ar_prior():
    cfg = shapes.ar_prior()
    with cfg.unlocked():
        cfg.model.update(dict(width=2048, layers=24, heads=32, embed_dim=EMBED_DIM,
                              text_width=TEXT_WIDTH, text_len=TEXT_LEN, pca_components=319,
                              num_buckets=1024, dot_buckets=1024))
        cfg.train.update(dict(batch_size=4096, steps=1_000_000, lr=1.6e-4, b2=0.91, eps=1e-10,
                              weight_decay=4e-2, ema_decay=0.999, warmup=10_000))
        cfg.data.image_size = 224
    return _big(cfg)


def decoder():
    cfg = shapes.decoder()
    with cfg.unlocked():
        # context width 2048 = GLIDE's text-transformer width (the encoder_kv input width)
        cfg.model = shapes.unet(64, 512, (1, 2, 3, 4), 3, (32, 16, 8), out_channels=6,
                                context_dim=2048)
        cfg.model.num_head_channels = 64
        cfg.model.embed_dim = EMBED_DIM
        cfg.model.text_width = TEXT_WIDTH
        cfg.model.text_len = TEXT_LEN
        cfg.diffusion.sample_steps = "250"
        cfg.train.update(dict(batch_size=2048, steps=800_000, lr=1.2e-4, ema_decay=0.9999,
                              warmup=10_000))
        cfg.data.image_size = 64
    return _big(cfg)


def upsampler1():
    cfg = shapes.upsampler1()
    with cfg.unlocked():
        cfg.model = shapes.unet(256, 320, (1, 2, 3, 4), 3, (), out_channels=3, low_res=True,
                                conditional=False)
        cfg.diffusion.sample_steps = "ddim27"
        cfg.train.update(dict(batch_size=1024, steps=1_000_000, lr=1.2e-4, warmup=10_000))
        cfg.data.update(dict(image_size=256, low_res_size=64, crop_size=64, degradation="blur"))
    return _big(cfg)


def upsampler2():
    cfg = shapes.upsampler2()
    with cfg.unlocked():
        cfg.model = shapes.unet(1024, 192, (1, 1, 2, 2, 4, 4), 2, (), out_channels=3,
                                low_res=True, conditional=False)
        cfg.model.dropout = 0.0
        cfg.diffusion.sample_steps = "ddim15"
        cfg.train.update(dict(batch_size=512, steps=1_000_000, lr=1.0e-4, warmup=10_000))
        cfg.data.update(dict(image_size=1024, low_res_size=256, crop_size=256, degradation="bsr"))
    return _big(cfg)


def clip():
    cfg = shapes.clip()
    with cfg.unlocked():
        cfg.model = clip_model()
        cfg.train.update(dict(batch_size=32768, steps=400_000, lr=5e-4, warmup=2000))
        cfg.data.image_size = 224
    return _big(cfg)


BUILDERS = dict(decoder=decoder, clip=clip, prior=prior, ar_prior=ar_prior,
                upsampler1=upsampler1, upsampler2=upsampler2)


def get_config(arg=None):
    return common.pick(arg, BUILDERS)
