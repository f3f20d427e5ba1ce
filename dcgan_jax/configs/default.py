"""The embedded default: DCGAN on 5,000 MNIST digits at 32x32, offline, on CPU.

The paper's DCGAN (the tutorial's networks, BCE, Adam 2e-4 / 0.5) with two additions that
raised its image quality on every seed measured (README, Results): the R1 penalty on D
(r1_weight 1.0) and an EMA of G's parameters (g_ema_decay 0.999), for 7,800 steps, as long
as the plain DCGAN's 10,000 take. The other presets train the paper's DCGAN without them.

Every preset imports this file and overrides fields; any field can be set from
the command line, e.g. `--config.batch_size=128`. Each field's note is above it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data.
  # 'embedded', 'imagefolder' or 'tfds:<name>' (e.g. 'tfds:celeb_a').
  config.dataset = "embedded"
  # imagefolder: the folder of images; tfds: the data dir ('' = tfds's default).
  config.data_dir = ""
  config.split = "train"  # tfds split
  config.image_size = 32  # 32, 64 or 128
  config.channels = 1  # 1 (grayscale) or 3 (RGB); images are converted to this
  # Class-conditional G and D, on the data's classes: the embedded digits' labels, a tfds
  # dataset's ClassLabel feature 'label', an image folder's first-level subfolders (one per
  # class, as torchvision's ImageFolder reads them). The classes are kept in the workdir
  # (classes.json); sample grids show one row per class.
  config.conditional = False
  config.max_classes = 1000  # a conditional run refuses data with more classes than this
  # Train on some of the data's classes only: their names or indices, comma-separated (e.g.
  # "5,6,7,8,9" of the digits, "cat,dog" of an image folder's class folders); '' = all. A
  # conditional run's classes are then these, in the data's order.
  config.classes = ""
  # Start a new run from networks it did not train (docs/guide.md#starting-from-a-trained-
  # run): another run's workdir, or "NETG.pth,NETD.pth" (the PyTorch tutorial's files). Its G
  # and D weights and BatchNorm statistics, with fresh optimizers at step 0, on data of the
  # same image size and channels; a workdir with checkpoints resumes and never reads it.
  config.init_from = ""
  config.init_checkpoint = "latest"  # of an init_from workdir: 'latest' or 'best'
  config.init_g_ema = False  # an init_from workdir's EMA of G becomes the new run's G
  # D's first N blocks (a strided convolution and its norm) keep their weights: FreezeD (Mo et
  # al. 2020), for fine-tuning from init_from; 0 = train all of D; at most 3, 4, 5 at 32, 64,
  # 128 px (the logit layer, and a conditional D's class projection, always train).
  config.freeze_d_layers = 0
  # The decoded-image cache; '' = $XDG_CACHE_HOME/dcgan_jax or ~/.cache/dcgan_jax.
  config.cache_dir = ""
  config.strict_data = False  # unreadable images: False skips them (logged), True stops
  config.decode_workers = 0  # workers decoding images into the cache; 0 = all cores
  # imagefolder: decode JPEGs at reduced DCT scale (~2x faster, not the tutorial's exact
  # pixels); part of the cache key.
  config.jpeg_draft = False
  # imagefolder: larger images (width x height, read from the header) are skipped as
  # unreadable ones are.
  config.max_image_pixels = 120_000_000
  config.prefetch_batches = 2  # batches prepared ahead on a background thread
  config.data_on_device = False  # hold the uint8 dataset on the accelerator, gather there
  # Data parallelism: devices in the 1-D 'data' mesh (0 = all); the batch is split over them
  # and must divide by their number.
  config.num_devices = 0
  # Iterations per jitted call (lax.scan over batches held on the device); chunks end on
  # every log/sample/checkpoint/eval step, and the shorter ones run padded in one program of
  # their own: two compilations at most, whatever the intervals and the resume step; 1: a call
  # per step.
  config.steps_per_dispatch = 25

  # Models: the PyTorch DCGAN tutorial's topology.
  config.nz = 100  # latent size
  config.ngf = 32  # generator width (the widest layer is ngf * image_size / 8)
  config.ndf = 32  # discriminator width
  # G's transposed convs: 'auto', 'xla', 'phase', 'matmul', 'col2im' or 'vjp' (same maths).
  config.upconv_impl = "auto"
  config.downconv_impl = "auto"  # D's strided convs: 'auto', 'xla' or 'matmul' (same maths)
  # 'bfloat16': mixed precision (params, optimizer, BatchNorm statistics, images and logits
  # stay float32).
  config.compute_dtype = "float32"
  # GPUs: XLA's deterministic kernels (XLA_FLAGS --xla_gpu_deterministic_ops, set by the run
  # before JAX starts), so that a seed fixes the run and a resumed run equals an uninterrupted
  # one there too; False: XLA's fastest GPU kernels, whose sums may round differently from run
  # to run. CPUs and TPUs are deterministic either way.
  config.deterministic = True

  # Optimisation: Adam for both networks, as in the paper.
  config.batch_size = 64
  config.num_train_steps = 7800  # iterations (D step + G step); -1: use num_epochs
  config.num_epochs = -1.0  # used when num_train_steps is -1
  config.g_learning_rate = 2e-4
  config.d_learning_rate = 2e-4
  config.adam_b1 = 0.5
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.label_smoothing = 0.0  # one-sided: D's real target is 1 - label_smoothing
  # > 0: also keep an exponential moving average of G's parameters, ema = decay * ema +
  # (1 - decay) * params after every G step; evaluated alongside G (metrics prefixed ema_).
  config.g_ema_decay = 0.999

  # GAN variants (docs/guide.md#gan-variants); the paper's DCGAN but for R1 (r1_weight).
  # D's and G's losses: 'bce' (the paper's non-saturating loss), 'hinge', 'lsgan' (least
  # squares) or 'wgan_gp' (Wasserstein with gradient penalty; its paper trains with learning
  # rates 1e-4, adam_b1 0.0, adam_b2 0.9 and 5 D updates per G update).
  config.loss = "bce"
  # What follows D's inner convolutions: 'batch' (BatchNorm), 'layer' (LayerNorm per image),
  # 'none', or 'auto': 'layer' for wgan_gp (its penalty needs a critic without BatchNorm),
  # 'batch' otherwise.
  config.d_norm = "auto"
  config.spectral_norm = False  # divide D's kernels by their spectral norm (power iteration)
  config.gp_weight = 10.0  # wgan_gp: the gradient penalty's weight (lambda)
  # > 0: R1 penalty gamma / 2 * E ||grad_x D(x)||^2 on real images; 0: the paper's DCGAN.
  config.r1_weight = 1.0
  # D updates per G update, each on its own real batch (an iteration reads this many batches).
  config.d_steps_per_g_step = 1
  # DiffAugment of D's inputs, real and fake alike: '' or any of 'color,translation,cutout'.
  config.diffaugment = ""

  # Reproducibility: fixes initialisation, noise, data order and the sample noise.
  config.seed = 0

  # Outputs in the workdir.
  config.log_every_steps = 50  # a metrics.csv row (means over the interval)
  config.checkpoint_every_steps = 1000  # an Orbax checkpoint (and one at the end)
  config.sample_every_steps = 1000  # a fixed-noise sample grid (and one at the end)
  config.num_sample_images = 64  # images in each sample grid
  config.sample_bn_mode = "train"  # BatchNorm when sampling: 'train' (batch stats) or 'eval'
  config.max_checkpoints_to_keep = 3  # older checkpoints are deleted; 0 keeps all
  # TensorBoard event files in workdir/tensorboard (metrics, sample grids, the config):
  # `tensorboard --logdir WORKDIR`.
  config.tensorboard = True

  # Evaluation: image quality during training (columns of metrics.csv) and with --mode eval.
  # 'classifier': the project's digit classifier (1-channel digits; classifier_fid,
  # classifier_kid, class histogram); 'inception': the FID Inception (fid, kid; needs
  # inception_weights); '': no evaluation.
  config.evaluator = "classifier"
  config.eval_every_steps = 1000  # evaluate every this many steps and at the end; 0 = never
  # Generated images per evaluation; also the most real images in the reference (the
  # embedded digits: the classifier's 4,000 training digits).
  config.eval_num_samples = 10000
  config.inception_weights = ""  # path of pt_inception-2015-12-05-6726825d.pth (docs/guide.md)
  # The lowest value keeps a checkpoint in workdir/best; 'auto': the FID of G's EMA if
  # g_ema_decay > 0, else of G.
  config.best_metric = "auto"

  return config


def papers_dcgan(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's DCGAN, as the tutorial trains it: config without the embedded default's R1 and
  EMA of G, which are measured on its digits only (--config.r1_weight=1.0
  --config.g_ema_decay=0.999 add them to any preset)."""
  config.r1_weight = 0.0
  config.g_ema_decay = 0.0
  return config
