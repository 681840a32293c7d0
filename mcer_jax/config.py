"""The base configuration every experiment file starts from.

Every knob the project has is named here once, with its default. Experiment
files in `experiments/` change values, never add keys, and the returned config
is locked, so a command-line override of a key that does not exist fails with
a message naming it.

Paper symbols and their keys:
  alpha (L_m)   -> loss.alpha          beta (L_avl) -> loss.beta
  gamma (L_dc)  -> loss.gamma          eta (L_MI)   -> loss.eta
  L (gated transformer layers)          -> model.cross.num_layers
  d (common size of the cross-modal task) -> model.cross.dim
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the unlocked base config; experiment files adjust and lock it."""
  config = ml_collections.ConfigDict()
  config.seed = 1111

  # Data: where the released files are and how batches are made.
  config.data = ml_collections.ConfigDict()
  config.data.name = "mosi"  # mosi | mosei | sims | synthetic
  config.data.manual_dir = ""  # The user's released files (MMSA, MISA or CSD layout).
  config.data.data_dir = "~/tensorflow_datasets"  # Where prepared TFDS data goes.
  config.data.layout = "auto"  # auto | mmsa | misa | csd
  config.data.mmsa_file = ""  # File name inside manual_dir; "" picks the only *.pkl MMSA file.
  config.data.label_range = 3.0  # Labels lie in [-label_range, label_range].
  config.data.max_text_len = 50
  config.data.max_audio_len = 50
  config.data.max_vision_len = 50
  # Text is cut to the smallest of these lengths that holds the batch's longest
  # sample, so XLA compiles one step per bucket and short batches do less work.
  config.data.text_buckets = (8, 16, 24, 32, 40, 50)
  # Training batches of similar text length: each run of this many batches of
  # the shuffled order is sorted by text length, then the epoch's batches are
  # shuffled. Batches fall into shorter buckets, so the text encoder computes
  # fewer padding tokens (on the 114 MOSI training samples at batch 16, 23
  # instead of 34 tokens a batch on average); 0 keeps the plain shuffle.
  # Evaluation order is never changed.
  config.data.length_pool = 8
  config.data.strict_features = False  # True: NaN or inf features raise instead of becoming 0.
  config.data.num_synthetic = 0  # Samples per split, synthetic data only (train; valid and test get a quarter).

  # Text encoder: a local Hugging Face BERT folder, or a small random one.
  config.text_encoder = ml_collections.ConfigDict()
  config.text_encoder.checkpoint = ""  # Folder with config.json, model.safetensors, vocab.txt.
  # False freezes the text encoder: its updates are zero and no gradient is
  # computed for it, which skips its backward pass.
  config.text_encoder.finetune = True
  # X_t: "cls" is the final-layer [CLS] vector (the paper); "mean" is the masked
  # mean of the final layer, which suits encoders trained with mean pooling,
  # such as the sentence-transformers checkpoints.
  config.text_encoder.pooling = "cls"
  # Used only when checkpoint is "": a randomly initialised BERT of this size.
  config.text_encoder.random_init = ml_collections.ConfigDict()
  config.text_encoder.random_init.vocab_size = 30522
  config.text_encoder.random_init.hidden_size = 64
  config.text_encoder.random_init.num_layers = 2
  config.text_encoder.random_init.num_heads = 2
  config.text_encoder.random_init.intermediate_size = 128

  # Model: sizes, dropout and the switches for every task and regulariser.
  config.model = ml_collections.ConfigDict()
  # float32 | bfloat16 (activations; parameters and losses stay float32) |
  # float64 (everything, for numerical checks; slow, and turns on JAX's 64-bit mode).
  config.model.dtype = "float32"
  # Dropout inside BERT (hidden states and attention weights), or on the
  # projected sequence when the text arrives as precomputed features.
  config.model.text_dropout = 0.1
  # Width of the linear projection used in place of BERT for precomputed text features.
  config.model.text_projection_dim = 128
  config.model.audio_lstm_hidden = 16
  config.model.audio_out = 16
  config.model.audio_dropout = 0.0  # On the last LSTM state, before the linear map.
  config.model.vision_lstm_hidden = 32
  config.model.vision_out = 32
  config.model.vision_dropout = 0.0  # On the last LSTM state, before the linear map.
  config.model.fusion_dim = 128  # F'_m
  config.model.text_post_dim = 32  # H_t
  config.model.audio_post_dim = 16  # H_a
  config.model.vision_post_dim = 32  # H_v
  config.model.post_dropout = 0.1  # On the inputs of F'_m, H_t, H_a and H_v.
  config.model.latent_dim = 32  # Size of z in every variational encoder.
  config.model.min_sigma = 1e-4  # sigma = softplus(.) + min_sigma
  config.model.unimodal_tasks = True  # Heads t, a, v and their generated labels.
  config.model.cross_tasks = "mt,ma,mv"  # Comma-separated subset of mt,ma,mv; "" disables the cross-modal task.
  config.model.multimodal_bottleneck = True  # M-MIB: variational encoder for the multimodal task.
  config.model.unimodal_bottleneck = True  # S-MIB: variational encoders for t, a, v.
  config.model.discriminator = True
  config.model.mutual_information = True
  config.model.mi_hidden = 64
  config.model.cross = ml_collections.ConfigDict()
  config.model.cross.dim = 32
  config.model.cross.length = 50  # Common length of the three sequences.
  config.model.cross.num_layers = 2
  config.model.cross.num_heads = 4
  config.model.cross.ffn_dim = 64
  config.model.cross.dropout = 0.1  # Attention, gated-layer outputs and the input of each h_c.
  config.model.cross.first_layer_summary = "bigru"  # bigru | linear (BBFN's masked-mean map)
  config.model.cross.head_dim = 64  # Hidden size of each modality-dominated head.

  # Losses: L = L_task + alpha L_m + beta L_avl + gamma L_dc + eta L_MI.
  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1.9
  config.loss.beta = 0.001
  config.loss.gamma = 0.05
  config.loss.eta = 0.1
  # KL(q(z|x) || N(0, I)) per sample: "sum" over latent dimensions (the
  # textbook KL), or "mean" over them, which divides it by model.latent_dim.
  config.loss.kl_reduction = "sum"
  config.loss.discriminator_group_size = 1  # k in the discriminator loss.
  config.loss.discriminator_layer_average = False  # True: scale L_dc by 1/(2L).
  config.loss.mi_form = "full"  # full | mmim (quadratic term only, as MMIM's code)
  config.loss.mi_entropy = False
  # Without H(y), log q(y|x) grows without bound as y collapses; these keep
  # the bound finite: no gradient into y, and logvar squashed into (-b, b).
  config.loss.mi_detach_target = True
  config.loss.mi_logvar_bound = 5.0  # Add MMIM's Gaussian-mixture estimate of H(y).
  config.loss.mi_entropy_memory_batches = 1  # Past batches the H(y) estimate keeps (MMIM keeps 1).
  config.loss.mi_entropy_ridge = 1e-6  # Added to the H(y) covariance diagonals so log det stays finite.
  # Task-loss denominator: "count" divides by the number of real samples, as
  # Self-MM does, so the weights W also scale the loss; "weight" divides by
  # the sum of the weights, a weighted average of |prediction - label|.
  config.loss.task_normalization = "count"

  # Label generation (unimodal and cross-modal).
  config.labels = ml_collections.ConfigDict()
  config.labels.eps = 1e-8
  config.labels.smoothing = True  # Average over epochs with weights (e-1)/(e+1), 2/(e+1).

  # Optimiser: Adam with four learning-rate groups, L2 weight decay as torch.optim.Adam.
  config.optim = ml_collections.ConfigDict()
  config.optim.lr_bert = 4.5e-5
  config.optim.lr_audio = 9e-4
  config.optim.lr_vision = 6e-3
  config.optim.lr_other = 7e-4
  config.optim.weight_decay_bert = 1e-3
  config.optim.weight_decay_audio = 1e-3
  config.optim.weight_decay_vision = 1e-3
  config.optim.weight_decay_other = 1e-3
  config.optim.grad_clip_norm = 0.0  # 0 disables clipping.

  # Training loop.
  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 30
  config.train.batch_size = 32  # Global batch: split evenly over all devices of all processes.
  config.train.eval_batch_size = 64
  config.train.early_stop_patience = 8  # Epochs without improvement before stopping; 0 disables.
  config.train.selection_metric = "MAE"
  config.train.selection_mode = "min"  # min | max
  # Training steps before the best checkpoint may be selected. An epoch that
  # ends earlier is validated and logged but counts for neither selection nor
  # early stopping: a model that still predicts close to the training mean can
  # win on a small validation set without having learned anything. A run that
  # ends earlier can select only its last epoch.
  config.train.selection_start_step = 0
  # Polyak averaging. When > 0, an exponential moving average of the
  # parameters, ema = decay * ema + (1 - decay) * params after every step, is
  # what validation, checkpoint selection, the test metrics and
  # --mode evaluate/predict use. 0 turns it off and stores no average.
  config.train.ema_decay = 0.0
  config.train.log_every_steps = 10
  config.train.save_label_history = True  # Generated labels of every training sample, each epoch.

  # Multi-host runs (cloud TPU pods, GPU clusters); empty values mean one process.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = False
  config.distributed.coordinator_address = ""
  config.distributed.num_processes = 0
  config.distributed.process_id = -1
  return config
