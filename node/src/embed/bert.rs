//! The BERT encoder of sentence-transformers models (MiniLM), forward pass only, on candle's
//! CPU tensors. candle-transformers' `BertModel` computes the same function; this one exists
//! for speed on short texts, where per-operation costs dominate:
//!
//! - query, key and value are one matrix product (1152 outputs) instead of three;
//! - softmax is candle's fused last-dimension kernel, not four separate operations;
//! - a batch of one text has no padding, so no attention mask is added;
//! - GELU's erf is a polynomial and one `expf` ([`GeluErf`]).
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

/// GELU with the exact (erf) form BERT uses, `x/2 · (1 + erf(x/√2))`, with erf from
/// Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7, below f32's resolution of the
/// result) and the platform's `expf`. candle's `gelu_erf` calls a pure-Rust erf that took 11%
/// of a forward pass; this takes a fraction of that.
struct GeluErf;

fn gelu_erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z.abs());
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erf = (1.0 - poly * (-z * z).exp()).copysign(z);
    0.5 * x * (1.0 + erf)
}

impl candle_core::CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(all) = storage else {
            candle_core::bail!("gelu-erf: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu-erf: contiguous input only")
        };
        let out = all[start..end].iter().map(|&x| gelu_erf(x)).collect();
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

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
            let inner = l
                .intermediate
                .forward(&attended)?
                .apply_op1_no_bwd(&GeluErf)?;
            x = l
                .output_norm
                .forward(&l.output.forward(&inner)?.add(&attended)?)?;
        }
        x.reshape((batch, tokens, h))
    }
}

#[cfg(test)]
mod tests {
    /// The approximation against the series of erf (to 1e-7), on both sides of 0 and far out.
    #[test]
    fn gelu_matches_the_exact_form() {
        fn erf(x: f64) -> f64 {
            // Maclaurin series: converges for |x| ≤ 4 with enough terms in f64.
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 || n < 10.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut worst = 0.0f64;
        for i in -800..=800 {
            let x = i as f64 / 100.0;
            let exact = if x.abs() > 5.5 {
                x.max(0.0)
            } else {
                0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
            };
            let got = super::gelu_erf(x as f32) as f64;
            worst = worst.max((got - exact).abs() / exact.abs().max(1.0));
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }
}
