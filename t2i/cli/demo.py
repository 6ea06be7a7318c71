"""``t2i demo``: the main job on the built-in synthetic data, end to end, in a few CPU minutes.

1. the ``shapes`` data set is generated (the dataset does it on first use);
2. DAMSM encoders are pretrained on it (``t2i pretrain damsm dmgan_shapes``) unless the recipe's checkpoint exists;
3. a small DM-GAN trains from ``recipes/dmgan_shapes.toml``;
4. the sample grid and attention maps are written, and every location is printed.
"""

from __future__ import annotations

from pathlib import Path

from t2i.cli._common import console


def run_demo(out: Path, steps: int | None, recipe_name: str = "dmgan_shapes", sets: list[str] | None = None) -> Path:
    from t2i import recipe as recipe_mod
    from t2i.train.loop import Stop, install_signal_handlers
    from t2i.train.setup import data_for, prepare_run

    def note(line: str) -> None:
        console.print(f"note: {line}", markup=False)

    recipe = recipe_mod.load(recipe_name, list(sets or []))
    stop = Stop()
    install_signal_handlers(stop)
    damsm = Path(recipe.train.pretrained.text_encoder)
    if not damsm.exists():
        console.rule("1/2 pretraining the DAMSM text and image encoders")
        pre_recipe = recipe_mod.load(recipe_name, list(sets or []))
        pre_recipe.name = f"{pre_recipe.name}-damsm"
        no_validation = data_for(pre_recipe, "damsm", held_out=False)  # the demo's time goes to the GAN
        with prepare_run(pre_recipe, kind="damsm", runs=out, datasets=no_validation, note=note) as pre:
            last = pre.trainer.fit(stop)
        if stop.signal_name:
            raise SystemExit(130)
        damsm.parent.mkdir(parents=True, exist_ok=True)
        damsm.write_bytes(Path(last).read_bytes())
        console.print(f"DAMSM encoders: {damsm}  (run folder {pre.run.path})", markup=False)
    else:
        console.print(f"using the pretrained DAMSM encoders in {damsm}", markup=False)
    console.rule("2/2 training DM-GAN on the synthetic shapes")
    with prepare_run(recipe, runs=out, steps=steps, note=note) as prepared:
        last = prepared.trainer.fit(stop=stop)
    run = prepared.run
    grids = sorted(run.samples.glob("step_*.png"))
    maps = sorted(run.samples.glob("attention_step_*.png"))
    console.rule("done")
    console.print(f"run folder:      {run.path}", markup=False)
    console.print(f"checkpoint:      {last}", markup=False)
    if grids:
        console.print(f"sample grid:     {grids[-1]}", markup=False)
    if maps:
        console.print(f"memory maps:     {maps[-1]}", markup=False)
    console.print(f"losses per step: {run.metrics_file}", markup=False)
    console.print(
        f'try:             t2i sample {last} "a big red circle above a small blue square" -o grid.png', markup=False
    )
    return run.path
