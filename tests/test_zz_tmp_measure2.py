# TEMPORARY measurement file (to be deleted).
import jax, jax.numpy as jnp, numpy as np, pytest, torch, transformers
from conftest import max_abs_diffs, randomise_torch_model
import test_bert as tbe
import test_vit as tv
import test_transformer_explainers as tte
import test_image_explainers as tie
from mhex_jax import weights
from mhex_jax.models import common
from mhex_jax.explain import image

def rel(ours, theirs):
  return [float(np.max(np.abs(np.asarray(a) - b.numpy())) / np.max(np.abs(b.numpy()))) for a, b in zip(ours, theirs)]

def test_m5():
  checkpoint = weights.minilm_checkpoint_dir()
  tokenizer = transformers.BertTokenizer.from_pretrained(str(checkpoint))
  batch = tokenizer(tbe.SENTENCES, padding=True, return_tensors="np")
  reference = transformers.BertModel.from_pretrained(str(checkpoint)).eval()
  with torch.no_grad():
    expected = reference(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True)
  model, variables = weights.load_bert(checkpoint, num_classes=2, mhex=False, new_head=True)
  _, state = jax.jit(lambda v, *x: model.apply(v, *x, mutable=["hidden_states"]))(
      variables, *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
  hidden = common.hidden_states(state)
  print("\nM5 abs", ["%.3g" % d for d in max_abs_diffs(hidden, expected.hidden_states)])
  print("M5 rel", ["%.3g" % d for d in rel(hidden, expected.hidden_states)])
  print("M5 max|ref|", ["%.3g" % float(np.abs(h.numpy()).max()) for h in expected.hidden_states])
  # only real tokens
  m = batch["attention_mask"].astype(bool)
  print("M5 abs real tokens", ["%.3g" % float(np.abs(np.asarray(a) - b.numpy())[m].max()) for a, b in zip(hidden, expected.hidden_states)])

def test_m6_bert(classifier_dir, torch_classifier):
  ids, mask, types = tbe._batch()
  with torch.no_grad():
    expected = torch_classifier(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                token_type_ids=torch.tensor(types), output_hidden_states=True, output_attentions=True)
  model, variables = weights.load_bert(classifier_dir, num_classes=3, mhex=False)
  logits, state = model.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              jnp.asarray(types, jnp.int32), mutable=["hidden_states", "attention"])
  print("\nM6 bert logits", float(np.abs(np.asarray(logits[0]) - expected.logits.numpy()).max()),
        "hidden", max(max_abs_diffs(common.hidden_states(state), expected.hidden_states)),
        "probs", max(max_abs_diffs(common.attention_probs(state), expected.attentions)),
        "max|h|", max(float(np.abs(h.numpy()).max()) for h in expected.hidden_states))

classifier_dir = tbe.classifier_dir
torch_classifier = tbe.torch_classifier

@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("vit_cls")
  config = transformers.ViTConfig(num_labels=3, **tv.TINY)
  randomise_torch_model(transformers.ViTForImageClassification(config)).save_pretrained(path)
  return path

def test_m6_vit(vit_dir, tmp_path):
  reference = transformers.ViTForImageClassification.from_pretrained(vit_dir, attn_implementation="eager").eval()
  images = tv._images()
  expected = tv._torch_outputs(reference, images)
  model, variables = weights.load_vit(vit_dir, num_classes=3, mhex=False)
  logits, state = model.apply(variables, images, mutable=["hidden_states", "attention"])
  print("\nM6 vit logits", float(np.abs(np.asarray(logits[0]) - expected.logits.numpy()).max()),
        "hidden", max(max_abs_diffs(common.hidden_states(state), expected.hidden_states)),
        "probs", max(max_abs_diffs(common.attention_probs(state), expected.attentions)),
        "max|h|", max(float(np.abs(h.numpy()).max()) for h in expected.hidden_states))
  config = transformers.ViTConfig(**tv.TINY)
  reference = randomise_torch_model(transformers.ViTModel(config, add_pooling_layer=True))
  reference.save_pretrained(tmp_path)
  images = tv._images(seed=1)
  expected = tv._torch_outputs(reference, images)
  model, variables = weights.load_vit(tmp_path, num_classes=2, mhex=False, new_head=True)
  _, state = model.apply(variables, images, mutable=["hidden_states"])
  print("M6 vitmodel hidden", max(max_abs_diffs(common.hidden_states(state), expected.hidden_states)),
        "max|h|", max(float(np.abs(h.numpy()).max()) for h in expected.hidden_states))

def test_m7():
  maps = tte._maps("bert_plain")
  for signed, key, f in ((maps["attcat"], "attcat_abs", np.abs), (maps["cat"], "cat_relu", lambda x: np.maximum(x, 0))):
    d = np.abs(maps[key] - f(signed))
    print(f"\nM7 {key} maxdiff={d.max():.3g} max|x|={np.abs(signed).max():.3g} rel={np.max(d / np.maximum(np.abs(signed), 1e-30)):.3g}")

def test_m8():
  model, variables = tie._conv_bn()
  images, targets = tie._images(), jnp.array([2, 0, 1])
  @jax.jit
  def explain(variables, images, targets):
    args = (model, variables, images, targets)
    return (image.integrated_gradients_attributions(*args, steps=8), image.integrated_gradients(*args, steps=8))
  ig, ig_map = explain(variables, images, targets)
  ref = np.abs(np.asarray(ig).sum(-1))
  d = np.abs(np.asarray(ig_map) - ref)
  print(f"\nM8 maxdiff={d.max():.3g} max|ig|={np.abs(ig).max():.3g} max rel={np.max(d / np.maximum(ref, 1e-30)):.3g} min|ref|={ref.min():.3g}")
