"""Weight importers: PyTorch files -> Flax checkpoints the evaluator and the LPIPS distance load.

  python -m cm_jax.convert inception --src=pt_inception-2015-12-05-6726825d.pth --out=DIR
  python -m cm_jax.convert lpips --vgg=vgg16-397923af.pth --heads=lpips_v0.1_vgg.pth --out=DIR

Reading .pth files needs torch (`pip install 'cm_jax[torch]'`); loading the converted checkpoints
does not.
"""
