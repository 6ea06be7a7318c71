"""Sample grids during training: fixed captions and fixed noise through the EMA generator.

``samples/step_NNNNNNNN.png`` shows each caption under its row of samples; ``samples/attention_step_NNNNNNNN.png``
shows, for the first few captions, each refinement stage's attention or memory-addressing map per word (and, for
the memory refiners, the write gate per word and the response-gate or three-way share maps).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from t2i.batch import Batch, text_features


def fixed_captions(dataset, count: int) -> list[list[int]]:
    """The first caption of ``count`` evenly spaced items: the same captions for the whole run."""
    n = len(dataset)
    picks = sorted({int(i * n / count) for i in range(min(count, n))})
    return [list(dataset.captions_of(i)[0]) for i in picks]


def caption_batch(token_lists: list[list[int]], pad_id: int, class_ids: list[int] | None = None) -> Batch:
    """Sort captions by length (descending, as the text encoder needs) and pad; returns the batch and the order."""
    lengths = torch.tensor([len(t) for t in token_lists])
    L = int(lengths.max())
    captions = torch.full((len(token_lists), L), pad_id, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        captions[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    ids = torch.tensor(class_ids or [0] * len(token_lists))
    return Batch(images=[], captions=captions, lengths=lengths, class_ids=ids, keys=[])


@torch.no_grad()
def generate(
    generator: nn.Module, text_encoder: nn.Module, captions: Batch, mask_ids: Tensor, noise: Tensor, eps: Tensor
):
    """Run G for each caption with the given noise; inputs must be sorted by length (captions.lengths)."""
    text = text_features(text_encoder, captions, mask_ids)
    return generator(noise, text.sentence, text.words, text.mask, eps=eps), text


def sheet_paths(folder: Path, step: int) -> dict[str, Path]:
    """The files ``SampleWriter.write`` makes at ``step`` (the attention sheet only for refiners with maps)."""
    folder = Path(folder)
    return {"samples": folder / f"step_{step:08d}.png", "attention": folder / f"attention_step_{step:08d}.png"}


class SampleWriter:
    def __init__(
        self,
        recipe,
        dataset,
        vocab,
        folder: Path,
        *,
        mask_ids: Tensor,
        captions: int = 6,
        columns: int = 6,
        attention_captions: int = 2,
    ):
        self.folder = Path(folder)
        self.vocab = vocab
        self.mask_ids = mask_ids
        self.columns = columns
        self.attention_captions = attention_captions
        tokens = fixed_captions(dataset, captions)
        order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
        self.tokens = [tokens[i] for i in order]
        self.texts = [vocab.decode(t) for t in self.tokens]
        gen = torch.Generator().manual_seed(recipe.seed + 12345)
        n = len(self.tokens) * columns
        self.z = torch.randn(n, recipe.model.z_dim, generator=gen)
        self.eps = torch.randn(n, recipe.model.cond_dim, generator=gen)
        self.text_encoder: nn.Module | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "captions.txt").write_text("".join(f"{t}\n" for t in self.texts))

    def write(self, generator: nn.Module, step: int, text_encoder: nn.Module | None = None) -> Path:
        from t2i import viz
        from t2i.refiners.gates import record_gates, sheet_row

        text_encoder = text_encoder or self.text_encoder
        assert text_encoder is not None, "SampleWriter needs the text encoder (set .text_encoder)"
        device = next(generator.parameters()).device
        repeated = [t for t in self.tokens for _ in range(self.columns)]
        batch = caption_batch(repeated, self.vocab.pad_id).to(device)
        was_training = generator.training
        generator.eval()
        with record_gates(generator) as gates:  # memory refiners' gates, drawn beside their maps
            out, _text = generate(generator, text_encoder, batch, self.mask_ids, self.z.to(device), self.eps.to(device))
        generator.train(was_training)
        grid = viz.caption_grid(out.images[-1].float().cpu(), self.texts, columns=self.columns, title=f"step {step}")
        paths = sheet_paths(self.folder, step)
        path = paths["samples"]
        viz.save_png(grid, path)
        if out.attention:
            sheets = []
            for c in range(min(self.attention_captions, len(self.tokens))):
                index = c * self.columns
                words = [self.vocab.words[i] for i in self.tokens[c]]
                rows = [
                    (
                        f"stage {s + 2}: {out.images[s + 1].shape[-1]} px",
                        out.images[s + 1][index].float().cpu(),
                        maps[index, : len(words)].float().cpu(),
                    )
                    for s, maps in enumerate(out.attention)
                ]
                marks = [sheet_row(gates.get(s + 2), index, len(words)) for s in range(len(out.attention))]
                sheets.append(viz.attention_sheet(rows, words, title=self.texts[c], gates=marks))
            viz.save_png(viz.stack_vertical(sheets), paths["attention"])
        return path
