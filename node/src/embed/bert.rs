//! The BERT encoder of sentence-transformers models (MiniLM), forward pass only, on candle's
//! CPU tensors. candle-transformers' `BertModel` computes the same function; this one exists
//! for speed on short texts, where per-operation costs dominate:
//!
//! - query, key and value are one matrix product (1152 outputs) instead of three;
//! - softmax is candle's fused last-dimension kernel, not four separate operations;
//! - a batch of one text has no padding, so no attention mask is added.
//!
//! 8-bit weights (candle's Q8_0 `QMatMul`) were tried: candle picks its AVX2 kernel for them
//! at compile time (`target_feature = "avx2"`), and a portable build (x86-64 baseline) falls
//! back to a scalar loop, over ten times slower than f32 through gemm, which chooses its
//! kernels at run time. So the weights stay f32 (docs/design.md, "Embedding speed").
//!
//! tests/embedder.rs checks the vectors against those computed by sentence-transformers.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::Config;

/// A dense layer: `x · Wᵀ + b`.
struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Dense {
            weight_t: weight.t()?,
            bias,
        })
    }

    fn load(vb: VarBuilder, (out, inp): (usize, usize)) -> candle_core::Result<Self> {
        Dense::new(vb.get((out, inp), "weight")?, vb.get(out, "bias")?)
    }

    /// `x` is 2-D (rows, inputs).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(size, "weight")?,
        vb.get(size, "bias")?,
        eps,
    ))
}

impl Bert {
    pub fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Bert> {
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let embedding = |name: &str, rows: usize| -> candle_core::Result<Embedding> {
            Ok(Embedding::new(e.pp(name).get((rows, h), "weight")?, h))
        };
        let word = embedding("word_embeddings", c.vocab_size)?;
        let position = embedding("position_embeddings", c.max_position_embeddings)?;
        let token_type = embedding("token_type_embeddings", c.type_vocab_size)?;
        let norm = layer_norm(e.pp("LayerNorm"), h, c.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention.self");
            let (mut w, mut b) = (Vec::new(), Vec::new());
            for part in ["query", "key", "value"] {
                w.push(a.pp(part).get((h, h), "weight")?);
                b.push(a.pp(part).get(h, "bias")?);
            }
            let qkv = Dense::new(Tensor::cat(&w, 0)?, Tensor::cat(&b, 0)?)?;
            layers.push(Layer {
                qkv,
                attention_out: Dense::load(l.pp("attention.output.dense"), (h, h))?,
                attention_norm: layer_norm(
                    l.pp("attention.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
                intermediate: Dense::load(l.pp("intermediate.dense"), (c.intermediate_size, h))?,
                output: Dense::load(l.pp("output.dense"), (h, c.intermediate_size))?,
                output_norm: layer_norm(l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        Ok(Bert {
            word,
            position,
            token_type,
            norm,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
        })
    }

    /// The last hidden states, (batch, tokens, hidden), for token ids and an attention mask
    /// (1 = real token), both (batch, tokens) u32.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let head = h / heads;
        let positions = Tensor::arange(0u32, tokens as u32, device)?;
        let x = self
            .word
            .forward(ids)?
            .add(&self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.norm.forward(&x)?.reshape((batch * tokens, h))?;
        // Padding gets a large negative score before the softmax (none in a batch of one).
        let bias = if batch > 1 {
            let m = mask.to_dtype(DType::F32)?;
            Some(((m - 1.0)? * 1e4)?.reshape((batch, 1, 1, tokens))?)
        } else {
            None
        };
        let scale = 1.0 / (head as f64).sqrt();
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, tokens, heads, head))?
                .transpose(1, 2)?
                .contiguous()
        };
        for l in &self.layers {
            let qkv = l.qkv.forward(&x)?;
            let q = split((qkv.narrow(1, 0, h)? * scale)?)?;
            let k = split(qkv.narrow(1, h, h)?)?;
            let v = split(qkv.narrow(1, 2 * h, h)?)?;
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(bias) = &bias {
                scores = scores.broadcast_add(bias)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch * tokens, h))?;
            let attended = l
                .attention_norm
                .forward(&l.attention_out.forward(&context)?.add(&x)?)?;
            let inner = l.intermediate.forward(&attended)?.gelu_erf()?;
            x = l
                .output_norm
                .forward(&l.output.forward(&inner)?.add(&attended)?)?;
        }
        x.reshape((batch, tokens, h))
    }
}
