"""`RNNDecoder`: Show-and-Tell (Vinyals et al. 2015), or Show-Attend-Tell with soft or hard attention (Xu et al.
2015), on an LSTM or a GRU, one layer or a stack of up to four.

The recurrent cell is a setting (`cell="lstm" | "gru"`, `num_layers` 1-4) and the state it carries is opaque to
everything outside this file: a flat tuple (h1, c1, h2, c2, ...) for LSTMs, (h1, h2, ...) for GRUs, which the
searches repeat and reorder row by row and the TFLite export stacks into one tensor. The image initialises
every layer's state.

The image vector, layer-normalised and projected linearly, initialises the state (h0, c0 for an LSTM). Both
choices matter: pooled CNN features have arbitrary scale (a from-scratch CNN's grew to a mean of ~30 here);
with tanh projections the optimiser learned the caption prior by saturating them, every image got the same
(h0, c0), and no gradient reached the image again - the classic "same caption for every image" collapse
(BENCHMARKS.md has the measurements). sgrvinod's Show-Attend-Tell also projects linearly.

Without attention, the whole caption runs through one fused `LSTM`/`GRU` layer per layer (teacher forcing),
with dropout between layers. With attention (`attention_dim` set), every step attends over the grid with the top
layer's previous hidden state, gates the context with sigmoid(f_beta(h)), and feeds [word embedding, context] to
the first layer's cell; the doubly stochastic
penalty lambda * mean_i (1 - sum_t alpha_ti)^2 is added to the loss in training. `step` serves generation
for both, so decoding is written once.

Hard attention (Xu et al. 2015, section 4.1): in training each word's context is one grid position s_t sampled from
alpha_t, not the weighted mean; the teacher-forced cross-entropy is then -log p(y | s, a), and the locations are
trained by REINFORCE on the caption's log-likelihood R = log p(y | s, a) with a moving-average baseline b
(b <- 0.9 b + 0.1 mean R, the paper's) and an entropy bonus: the loss adds
-reinforce_weight * sum_caption sg(R - b) sum_t log alpha_t[s_t] / words - entropy_weight * mean_t H(alpha_t),
an unbiased estimate of the gradient of the paper's lower bound per word. As in the paper, a share of the
captions (`hard_expected_share`, 0.5) uses the expected context instead of a sample, which lowers the variance
and trains the decoder on the context it sees at inference. The uniforms that pick the positions are drawn before
the scan over words (no random state inside a scan: JAX forbids it). At inference the context is the expectation
(the soft one, deterministic; the default) or the argmax position (`step(..., hard_context="argmax")`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.models.attention import SoftAttention
from captioner.precision import rnn_use_cudnn

CELLS = ("lstm", "gru")
MAX_LAYERS = 4
ATTENTIONS = ("soft", "hard")
HARD_CONTEXTS = ("expectation", "argmax")  # what a hard-attention decoder reads at inference
BASELINE_DECAY = 0.9  # the moving-average REINFORCE baseline of Xu et al. 2015


@keras.saving.register_keras_serializable(package="captioner")
class RNNDecoder(layers.Layer):
    """Word-level recurrent decoder conditioned on an image.

    Args:
        vocab_size: int. Output classes, `<pad>` included.
        embedding_dim: int. Word-embedding width. Defaults to 128.
        hidden_dim: int. Units of every recurrent layer. Defaults to 256.
        dropout_rate: float. Dropout on the top layer's output before the vocabulary projection, and between
            stacked layers in training (one mask per sequence, the same at every step). Defaults to 0.2.
        attention_dim: int | None. Soft-attention width; None is Show-and-Tell. Defaults to None.
        attention_regularization: float. lambda of the doubly stochastic penalty. Defaults to 1.0.
        state_init: str. "pooled" (the encoder's pooled vector) or "grid_mean" (the mean of the grid, as in
            Show-Attend-Tell). Defaults to "pooled".
        cell: str. "lstm" or "gru". Defaults to "lstm".
        num_layers: int. Stacked recurrent layers, 1 to 4. Defaults to 1.
        attention: str. "soft" or "hard" (with `attention_dim`). Defaults to "soft".
        entropy_weight: float. Hard attention: weight of the entropy bonus on alpha. Defaults to 0.002.
        reinforce_weight: float. Hard attention: weight of the REINFORCE term (the paper's lambda_r). Defaults to 0.1
            (measured on Flickr8k: at 1.0 the term swamped the cross-entropy; BENCHMARKS.md).
        hard_expected_share: float. Hard attention: share of captions trained on the expected context instead of
            a sampled grid position. Defaults to 0.5.
        seed: int | None. Hard attention: seed of the location sampling. Defaults to None.

    Call:
        tokens: (batch, steps) int ids, `<start> w1 ... wn` padded with 0.
        pooled: (images, pooled_dim) image vectors, images = batch / captions_per_image.
        grid: (images, num_pixels, encoder_dim) feature grid (used with attention or state_init="grid_mean").
        captions_per_image: int. Consecutive token rows that share one image. Defaults to 1.
        returns logits (batch, steps, vocab_size) predicting `w1 ... wn <end>`.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        hidden_dim: int = 256,
        dropout_rate: float = 0.2,
        attention_dim: int | None = None,
        attention_regularization: float = 1.0,
        state_init: str = "pooled",
        cell: str = "lstm",
        num_layers: int = 1,
        attention: str = "soft",
        entropy_weight: float = 0.002,
        reinforce_weight: float = 0.1,
        hard_expected_share: float = 0.5,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if state_init not in ("pooled", "grid_mean"):
            raise ValueError(f"state_init must be 'pooled' or 'grid_mean', got '{state_init}'")
        if cell not in CELLS:
            raise CaptionerError(f"unknown cell '{cell}'; choose lstm or gru")
        if not 1 <= int(num_layers) <= MAX_LAYERS:
            raise CaptionerError(f"num_layers must be between 1 and {MAX_LAYERS} (got {num_layers})")
        if attention not in ATTENTIONS:
            raise CaptionerError(f"unknown attention '{attention}'; choose soft or hard")
        if not 0.0 <= float(hard_expected_share) < 1.0:
            raise CaptionerError(
                f"hard_expected_share must be in [0, 1) (got {hard_expected_share}); 1 would be soft attention"
            )
        self.attention_type = attention
        self.entropy_weight = float(entropy_weight)
        self.reinforce_weight = float(reinforce_weight)
        self.hard_expected_share = float(hard_expected_share)
        self.seed = seed
        self.cell = cell
        self.num_layers = int(num_layers)
        self.vocab_size = int(vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = int(hidden_dim)
        self.dropout_rate = float(dropout_rate)
        self.attention_dim = None if attention_dim is None else int(attention_dim)
        self.attention_regularization = float(attention_regularization)
        self.state_init = state_init
        self.embedding = layers.Embedding(self.vocab_size, self.embedding_dim, name="embedding")
        self.pooled_norm = layers.LayerNormalization(name="pooled_norm")  # normalises the grid mean too
        # Layer i's recurrent layer and its state projections. Attribute names are what a saved file's weights are
        # filed under: layer 1 keeps `lstm`, `init_h`, `init_c` (runs saved before cells were a setting load as they
        # were); later layers add a suffix (`lstm_2`, `init_h_2`...). The lists are for the code; saving files each
        # layer once, under its attribute.
        self._rnns: list[layers.Layer] = []
        self._inits: list[list[layers.Dense]] = []
        recurrent = layers.LSTM if cell == "lstm" else layers.GRU
        for i in range(self.num_layers):
            suffix = "" if i == 0 else f"_{i + 1}"
            rnn = recurrent(
                self.hidden_dim,
                return_sequences=True,
                name=f"{cell}{suffix}",
                use_cudnn=rnn_use_cudnn(self.compute_dtype),
            )
            inits = [
                layers.Dense(self.hidden_dim, name=f"init_{part}{suffix}")
                for part in (("h", "c") if cell == "lstm" else ("h",))
            ]
            setattr(self, f"{cell}{suffix}", rnn)
            for dense, part in zip(inits, ("h", "c")):
                setattr(self, f"init_{part}{suffix}", dense)
            self._rnns.append(rnn)
            self._inits.append(inits)
        self.dropout = layers.Dropout(self.dropout_rate)
        self.output_projection = layers.Dense(self.vocab_size, name="output_projection")
        if self.attention_dim is not None:
            self.attention = SoftAttention(self.attention_dim, name="attention")
            self.gate = None  # f_beta: built once the grid width is known
        if self.hard:
            self.seed_generator = keras.random.SeedGenerator(seed, name="location_seed")
            # float32 whatever the precision: a running mean of log-likelihoods
            self.reward_baseline = self.add_weight(
                shape=(), initializer="zeros", trainable=False, dtype="float32", name="reward_baseline"
            )
            self.baseline_updates = self.add_weight(
                shape=(), initializer="zeros", trainable=False, dtype="float32", name="baseline_updates"
            )

    @property
    def uses_attention(self) -> bool:
        return self.attention_dim is not None

    @property
    def hard(self) -> bool:
        return self.uses_attention and self.attention_type == "hard"

    def build(self, tokens_shape, pooled_shape=None, grid_shape=None):
        if self.built:
            return
        self.embedding.build(tokens_shape)
        image_dim = grid_shape[-1] if self.state_init == "grid_mean" else pooled_shape[-1]
        self.pooled_norm.build((None, image_dim))
        for dense in (d for inits in self._inits for d in inits):
            dense.build((None, image_dim))
        lstm_input = self.embedding_dim
        if self.uses_attention:
            encoder_dim = grid_shape[-1]
            self.attention.build(grid_shape, None, (None, self.hidden_dim))
            self.gate = layers.Dense(encoder_dim, activation="sigmoid", name="gate")
            self.gate.build((None, self.hidden_dim))
            lstm_input += encoder_dim
        for i, rnn in enumerate(self._rnns):
            rnn.build((None, None, lstm_input if i == 0 else self.hidden_dim))
        self.output_projection.build((None, self.hidden_dim))
        self.built = True

    @property
    def state_count(self) -> int:
        """Tensors in the state, each (batch, hidden_dim): 2 per LSTM layer (h, c), 1 per GRU layer (h)."""
        return self.num_layers * (2 if self.cell == "lstm" else 1)

    def initial_state(self, pooled, grid=None):
        """The state, a tuple of `state_count` (batch, hidden_dim) tensors, from the pooled vector or the mean of
        the grid: every layer's own projection of the same normalised image vector."""
        image = ops.mean(grid, axis=1) if self.state_init == "grid_mean" else pooled  # (batch, image_dim)
        image = self.pooled_norm(image)
        return tuple(dense(image) for inits in self._inits for dense in inits)

    def _per_layer(self, state) -> list[list]:
        """The flat state split per layer: [[h, c], ...] (LSTM) or [[h], ...] (GRU)."""
        size = 2 if self.cell == "lstm" else 1
        return [list(state[i * size : (i + 1) * size]) for i in range(self.num_layers)]

    def _between_layers(self, batch_like, training=None) -> list:
        """Dropout masks between stacked layers, one (batch, hidden_dim) per boundary, drawn once per sequence and
        used at every step (variational dropout): drawn outside any loop, so no random state is touched inside
        a scan (JAX forbids it). Empty when not training, for one layer, or without dropout."""
        if not training or self.num_layers == 1 or self.dropout_rate == 0:
            return []
        ones = ops.ones_like(batch_like)  # (batch, hidden_dim)
        return [self.dropout(ones, training=True) for _ in range(self.num_layers - 1)]

    def _cells(self, inputs, state, masks=()):
        """One step through every layer: inputs (batch, in_dim), the flat state -> top output (batch, hidden_dim),
        the new flat state; `masks` from `_between_layers` in training."""
        new_state = []
        x = inputs
        for i, (rnn, layer_state) in enumerate(zip(self._rnns, self._per_layer(state))):
            if i > 0 and masks:
                x = x * masks[i - 1]
            x, layer_state = rnn.cell(x, layer_state)  # (batch, hidden_dim)
            new_state.extend(layer_state)
        return x, tuple(new_state)

    def memory(self, grid):
        """What `step` attends over: (grid, projected grid), computed once per image; () without attention."""
        if not self.uses_attention:
            return ()
        # (batch, num_pixels, encoder_dim), (batch, num_pixels, attention_dim)
        return grid, self.attention.project(grid)

    def call(self, tokens, pooled, grid=None, training=None, captions_per_image=1):
        # What depends on the image alone (initial state, projected grid) is computed once per image, then
        # repeated for its captions: rows b*captions_per_image ... of `tokens` belong to image b.
        state = self.initial_state(pooled, grid)  # (images, hidden_dim) x 2
        memory = self.memory(grid)  # (images, num_pixels, encoder_dim), (images, num_pixels, attention_dim)
        if captions_per_image > 1:
            state, memory = keras.tree.map_structure(
                lambda x: ops.repeat(x, captions_per_image, axis=0), (state, memory)
            )
        embedded = self.embedding(tokens)  # (batch, steps, embedding_dim)
        masks = self._between_layers(state[0], training)  # (batch, hidden_dim) per boundary between layers
        reinforce = None  # hard attention in training: what the location loss needs
        if not self.uses_attention:
            outputs = embedded
            for i, (rnn, layer_state) in enumerate(zip(self._rnns, self._per_layer(state))):  # fused layer by layer
                if i > 0 and masks:
                    outputs = outputs * masks[i - 1][:, None, :]  # the same mask at every step, as in the scan below
                outputs = rnn(outputs, initial_state=layer_state, training=training)  # (batch, steps, hidden_dim)
        else:
            count = self.state_count
            sampling = bool(training) and self.hard
            xs = ops.moveaxis(embedded, 1, 0)  # (steps, batch, embedding_dim)
            expected = None
            if sampling:  # drawn here, outside the scan: one uniform per word and caption, one coin per caption
                batch, steps = ops.shape(tokens)[0], ops.shape(tokens)[1]
                # (batch,)
                expected = keras.random.uniform((batch,), seed=self.seed_generator) < self.hard_expected_share
                xs = (xs, keras.random.uniform((steps, batch), seed=self.seed_generator))  # + (steps, batch) uniforms

            def step(carry, inputs):  # one word for the whole batch: carry (state..., output, alpha[, position])
                # (batch, embedding_dim)
                word, choice = (inputs[0], (inputs[1], expected)) if sampling else (inputs, None)
                output, new_state, alpha, position = self._attend_and_step(word, carry[:count], memory, masks, choice)
                carry = (
                    *new_state,
                    output,
                    ops.cast(alpha, carry[count + 1].dtype),
                    *(() if position is None else (position,)),
                )
                return (
                    carry,
                    carry,
                )  # Keras's scan stacks outputs shaped as the carry: output and alpha ride along in it

            # A scan over time, not a Python loop unrolled into the graph: one step body to trace and differentiate.
            pixels = ops.zeros_like(memory[1][..., 0])  # (batch, num_pixels)
            # (batch,) sampled position
            positions = (ops.zeros((ops.shape(pixels)[0],), dtype="int32"),) if sampling else ()
            # (steps, batch, ...) each
            _, stacked = ops.scan(step, (*state, ops.zeros_like(state[0]), pixels, *positions), xs)
            outputs = ops.moveaxis(stacked[count], 0, 1)  # (batch, steps, hidden_dim): the top layer's output
            alphas = ops.moveaxis(stacked[count + 1], 0, 1)  # (batch, steps, num_pixels)
            if training and self.attention_regularization > 0:
                mask = ops.cast(ops.not_equal(tokens, 0), "float32")[..., None]  # (batch, steps, 1)
                # (batch, num_pixels); the penalty in float32
                coverage = ops.sum(ops.cast(alphas, "float32") * mask, axis=1)
                self.add_loss(self.attention_regularization * ops.mean(ops.square(1.0 - coverage)))
            if sampling:
                reinforce = (
                    alphas,
                    ops.moveaxis(stacked[count + 2], 0, 1),
                    expected,
                )  # + (batch, steps) sampled positions
        logits = self.output_projection(self.dropout(outputs, training=training))  # (batch, steps, vocab_size)
        if reinforce is not None:
            self.add_loss(self._reinforce_loss(tokens, logits, *reinforce))
        return logits

    def _attend_and_step(self, embedded, state, memory, masks=(), choice=None, hard_context="expectation"):
        """One word with attention. `choice`: hard attention in training, (uniform (batch,), expected (batch,) bool):
        each row reads the position its uniform picks from alpha, or the expected context where `expected`. Returns
        the top output, the new state, alpha (batch, num_pixels) and the sampled positions (batch,) int32 or None."""
        h = self._per_layer(state)[-1][0]  # (batch, hidden_dim): the top layer's previous hidden state asks
        features, projected = memory
        context, alpha = self.attention(features, projected, h)  # (batch, encoder_dim), (batch, num_pixels)
        position = None
        if choice is not None:
            uniform, expected = choice
            below = ops.cumsum(ops.cast(alpha, "float32"), axis=-1) < uniform[:, None]  # (batch, num_pixels)
            # (batch,) inverse CDF
            position = ops.minimum(ops.sum(ops.cast(below, "int32"), axis=-1), ops.shape(alpha)[-1] - 1)
            picked = ops.matmul(
                ops.one_hot(position, ops.shape(alpha)[-1], dtype=features.dtype)[:, None, :], features
            )[:, 0, :]  # (batch, encoder_dim)
            context = ops.where(expected[:, None], context, picked)  # (batch, encoder_dim)
        elif self.hard and hard_context == "argmax":
            # (batch, num_pixels)
            best = ops.one_hot(ops.argmax(alpha, axis=-1), ops.shape(alpha)[-1], dtype=features.dtype)
            context = ops.matmul(best[:, None, :], features)[:, 0, :]  # (batch, encoder_dim)
        context = self.gate(h) * context  # (batch, encoder_dim)
        output, state = self._cells(ops.concatenate([embedded, context], axis=-1), state, masks)  # (batch, hidden_dim)
        return output, state, alpha, position

    def _reinforce_loss(self, tokens, logits, alphas, positions, expected):
        """The location part of the hard-attention loss (module docstring): REINFORCE on each sampled caption's
        log-likelihood against the moving-average baseline, minus the entropy bonus; a scalar per word. Updates the
        baseline."""
        words = ops.cast(ops.not_equal(tokens, 0), "float32")  # (batch, steps)
        # targets of the teacher-forced inputs: the next token, and <end> after the last word
        following = ops.concatenate([tokens[:, 1:], ops.zeros_like(tokens[:, :1])], axis=1)  # (batch, steps)
        targets = ops.where(
            ops.not_equal(following, 0), following, ops.where(ops.not_equal(tokens, 0), Vocabulary.end_id, 0)
        )  # (batch, steps)
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)  # (batch, steps, vocab_size)
        # (batch, steps)
        word_ll = ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1)[..., 0] * words
        reward = ops.stop_gradient(ops.sum(word_ll, axis=1))  # (batch,) log p(y | s, a)
        sampled = 1.0 - ops.cast(expected, "float32")  # (batch,) captions that read sampled positions
        alphas = ops.cast(alphas, "float32")  # (batch, steps, num_pixels)
        # (batch, steps)
        location_ll = ops.log(ops.take_along_axis(alphas, ops.expand_dims(positions, -1), axis=-1)[..., 0] + 1e-8)
        mean_reward = ops.sum(reward * sampled) / ops.maximum(ops.sum(sampled), 1.0)
        updates, previous = ops.convert_to_tensor(self.baseline_updates), ops.convert_to_tensor(self.reward_baseline)
        baseline = ops.where(updates > 0, previous, mean_reward)  # the first batch starts it
        advantage = (reward - baseline) * sampled  # (batch,)
        reinforce = -ops.sum(advantage * ops.sum(location_ll * words, axis=1)) / ops.maximum(ops.sum(words), 1.0)
        entropy = -ops.sum(alphas * ops.log(alphas + 1e-8), axis=-1)  # (batch, steps)
        bonus = ops.sum(entropy * words) / ops.maximum(ops.sum(words), 1.0)
        self.reward_baseline.assign(BASELINE_DECAY * baseline + (1.0 - BASELINE_DECAY) * mean_reward)
        self.baseline_updates.assign(updates + 1.0)
        return self.reinforce_weight * reinforce - self.entropy_weight * bonus

    def step(self, tokens, state, memory=(), hard_context="expectation"):
        """One word for every sequence in the batch.

        Args:
            tokens: (batch,) int ids of the previous word.
            state: the tuple `initial_state` (or the last step) gave, `state_count` tensors (batch, hidden_dim).
            memory: tuple from `memory(grid)`, rows aligned with `tokens`.
            hard_context: hard attention: read the "expectation" (soft context) or the "argmax" position.

        Returns:
            logits (batch, vocab_size), the new state, attention weights (batch, num_pixels) - (batch, 0)
            without attention.
        """
        embedded = self.embedding(tokens)  # (batch, embedding_dim)
        if self.uses_attention:
            output, state, alpha, _ = self._attend_and_step(embedded, state, memory, hard_context=hard_context)
        else:
            output, state = self._cells(embedded, state)  # (batch, hidden_dim)
            alpha = ops.zeros((ops.shape(tokens)[0], 0))
        return self.output_projection(output), state, alpha  # (batch, vocab_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            dropout_rate=self.dropout_rate,
            attention_dim=self.attention_dim,
            attention_regularization=self.attention_regularization,
            state_init=self.state_init,
            cell=self.cell,
            num_layers=self.num_layers,
            attention=self.attention_type,
            entropy_weight=self.entropy_weight,
            reinforce_weight=self.reinforce_weight,
            hard_expected_share=self.hard_expected_share,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "init_from" in config:  # files saved before 2026-12-06 name the state initialisation so
            config["state_init"] = config.pop("init_from")
        return cls(**config)


@keras.saving.register_keras_serializable(package="captioner")
class LSTMDecoder(RNNDecoder):
    """The name runs saved before cells were a setting carry in their files: the same decoder (one LSTM layer
    unless the file says otherwise), so they load as they were trained."""
