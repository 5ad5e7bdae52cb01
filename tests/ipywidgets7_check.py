"""The panels under ipywidgets 7.7.1 (Colab's version), driven from Python.

Run by tests/view/test_widgets.py::test_ipywidgets_7 in a subprocess with a folder holding
ipywidgets 7.7.1 first on PYTHONPATH (the project's environment has ipywidgets 8). Exits
non-zero on the first failed check; prints "ipywidgets 7.7.1 OK" at the end.

Checks, in both display modes: LoRAPanel on a tiny random Llama (rank 16 → the count text
PEFT gives), tooltips through ``description_tooltip``, the panel's widget mime bundle, Apply,
and an error shown in the panel; then a 2-step TrainPanel run and an AdapterPanel on the
embedded SmolLM2.
"""

import torch

torch.set_num_threads(1)

import ipywidgets  # noqa: E402

assert ipywidgets.__version__ == "7.7.1", (ipywidgets.__version__, ipywidgets.__file__)

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import lorakit as lk  # noqa: E402
from lorakit.core.settings import LoraSettings, help_text  # noqa: E402
from lorakit.view import widgets  # noqa: E402


def tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=64))


reference = get_peft_model(tiny(), LoraConfig(r=16, lora_alpha=32,
                                              target_modules=["q_proj", "v_proj"]))
trainable, total = reference.get_nb_trainable_parameters()
expected = f"trainable {trainable:,} of {total:,} = {100 * trainable / total:.3f}%"

for mode in ("static", "widget"):
    panel = lk.LoRAPanel(tiny(), display_mode=mode)
    assert panel.display_mode == mode
    panel.rank_slider.value = 16
    assert panel.rank_text.value == 16 and panel.alpha_text.value == 32
    assert panel.count_label.value == expected, (mode, panel.count_label.value, expected)
    assert sum(panel.bar_view.figure.data[1].y) == trainable
    if mode == "static":
        shown = panel.bar_view.widget.outputs[0]["data"]["application/vnd.plotly.v1+json"]
        assert sum(shown["data"][1]["y"]) == trainable
    else:
        assert sum(panel.bar_figure.data[1].y) == trainable
    assert panel.rank_text.description_tooltip == help_text(LoraSettings, "r")
    assert panel.target_boxes["q_proj"].description_tooltip.startswith("q_proj: 2 modules")
    bundle = panel._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == \
        panel.widget.model_id
    panel.apply_button.click()
    assert panel.error.value == "", panel.error.value
    assert panel.verified == (trainable, total), panel.verified
    assert f"trainable {trainable:,} of {total:,}" in panel.peft_label.value
    for box in panel.target_boxes.values():
        box.value = False
    assert panel.apply_button.disabled and "No target module" in panel.message.value
    original, widgets.attach = widgets.attach, None   # a callback that fails: shown in the panel
    try:
        panel.target_boxes["q_proj"].value = True
        panel.apply_button.click()
    finally:
        widgets.attach = original
    assert "TypeError" in panel.error.value, panel.error.value

model, tok = lk.load_model(progress=False)
peft_model = lk.attach(model, r=4, alpha=8, seed=0)
for mode in ("static", "widget"):
    train = lk.TrainPanel(peft_model, tok, "iso_dates", steps=2, batch_size=1,
                          measure_accuracy=False, display_mode=mode)
    result = train.train(block=True)
    assert result.steps_done == 2 and train.progress.value == train.progress.max == 2
    assert list(train.loss_view.figure.data[0].y) == train.losses[-2:] == result.losses
    assert train.evolution_view.widget.outputs, "no evolution figure"
    assert train.steps_text.description_tooltip

compare = lk.AdapterPanel(peft_model, tok, prompts="<b>Convert to ISO date: May 1, 2020",
                          max_new_tokens=4)
compare.generate_button.click()
assert compare.error.value == "", compare.error.value
assert set(compare.replies) == {"default", widgets.NO_ADAPTER}
assert "&lt;b&gt;Convert" in compare.output.value

print("ipywidgets 7.7.1 OK")
