"""The interactive editor: a local Gradio page over pipeline/editor.py (docs/editor.md).

    python scripts/app.py --runs runs/vae/synthetic runs/glow/synthetic runs/pggan/synthetic [--port 7860]

Pick a run, upload a photo (aligned, and inverted for the GAN), draw a random sample or pick a test image, then
move the sliders. Everything it writes (exports, new directions, Gradio's uploads) lies under --out.
"""

import argparse
import os
from pathlib import Path

from common.cli import UserError, run_main
from pipeline.editor import GIF_STEPS, SLIDER_ATTRIBUTES, Editor, EditorError, display_image


def build_page(editor: Editor):
    import gradio as gr

    names = list(editor.runs)
    with gr.Blocks(title="expression-synth editor") as page:
        gr.Markdown("## expression-synth: edit a face\nPick a method and a face, then move the sliders.")
        face_state, last_slider = gr.State(None), gr.State("Smiling")
        with gr.Row():
            with gr.Column(scale=1):
                run = gr.Dropdown(names, value=names[0], label="method (trained run)", elem_id="run")
                upload = gr.File(label="upload a photo", file_types=["image"], elem_id="upload")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", min_width=80)
                    sample = gr.Button("random sample", elem_id="sample")
                with gr.Row():
                    position = gr.Number(0, precision=0, label="test image", min_width=80)
                    pick = gr.Button("test image", elem_id="pick")
                method = gr.Radio(["mean", "boundary"], value=editor.methods(names[0])[0], label="direction")
                pose_method = gr.Radio(list(editor.methods(names[0], "pose")), label="pose direction",
                                       value=editor.methods(names[0], "pose")[0])
                keep = gr.CheckboxGroup(list(SLIDER_ATTRIBUTES), label="keep (hold fixed)", elem_id="keep")
            with gr.Column(scale=1):
                sliders = [gr.Slider(-3, 3, 0, step=0.1, label=a, elem_id=f"slider-{a}") for a in SLIDER_ATTRIBUTES]
                with gr.Row():
                    reset = gr.Button("reset", elem_id="reset")
                    save_png = gr.Button("download PNG", elem_id="save-png")
                    save_gif = gr.Button("download GIF of the last slider", elem_id="save-gif")
                download = gr.File(label="download", interactive=False, elem_id="download")
            with gr.Column(scale=1):
                shown = gr.Image(label="edited face", format="png", interactive=False, elem_id="face")
                pasted = gr.Image(label="pasted back into the photo", format="png", interactive=False,
                                  elem_id="pasted")
                status = gr.Markdown("Upload a photo, draw a sample or pick a test image.", elem_id="status")
        settings = [run, face_state, method, pose_method, keep, *sliders]

        # Gradio finds its progress tracker in a default argument; track_tqdm shows the fits' tqdm bars on the page
        def show(name, face, how, pose_how, kept, *values, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            if face is None:
                return gr.skip(), gr.skip(), "Upload a photo, draw a sample or pick a test image first."
            try:
                if not editor.has_latent(name, face):  # only a slow step shows its progress on the page
                    gan = editor.run(name).method == "pggan" and face.kind != "sample"
                    progress(0, desc="inverting the face (minutes on a CPU)" if gan else "encoding the face")
                    editor.latent(name, face)
                progress(0, desc="finding the directions (once per run)")
                r = editor.render(name, face, dict(zip(SLIDER_ATTRIBUTES, values)), how, pose_how, kept)
            except UserError as exc:
                return gr.skip(), gr.skip(), f"**error:** {exc}"
            note = f"{face.label} on {name}: {1000 * r.seconds:.0f} ms"
            return display_image(r.face), r.pasted, note

        def load(make, name, *rest, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            try:
                face = make()
            except UserError as exc:
                return (gr.skip(), gr.skip(), gr.skip(), f"**error:** {exc}")
            return (face, *show(name, face, *rest, progress=progress))

        def loader(make):  # an event handler of its own, so that Gradio tracks its progress
            def handler(given, name, *rest, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
                return load(lambda: make(given), name, *rest, progress=progress)
            return handler

        outputs = [shown, pasted, status]
        rest = [method, pose_method, keep, *sliders]
        upload.upload(loader(editor.photo_face), [upload, run, *rest], [face_state, *outputs])
        sample.click(loader(lambda s: editor.sample_face(int(s or 0))), [seed, run, *rest], [face_state, *outputs])
        pick.click(loader(lambda p: editor.cache_face(int(p or 0))), [position, run, *rest], [face_state, *outputs])

        def choose_run(name):
            return (gr.update(choices=list(editor.methods(name)), value=editor.methods(name)[0]),
                    gr.update(choices=list(editor.methods(name, "pose")), value=editor.methods(name, "pose")[0]))

        run.change(choose_run, run, [method, pose_method]).then(show, settings, outputs)
        for control in (method, pose_method, keep):
            control.input(show, settings, outputs, show_progress="minimal", trigger_mode="always_last")
        for attribute, slider in zip(SLIDER_ATTRIBUTES, sliders):
            slider.input(show, settings, outputs, show_progress="minimal", trigger_mode="always_last")
            slider.release(lambda a=attribute: a, None, last_slider)
        reset.click(lambda: [0.0] * len(sliders) + [[]], None, [*sliders, keep]).then(show, settings, outputs)

        def export(kind, name, face, how, pose_how, kept, attribute, *values):
            if face is None:
                return gr.skip(), "Nothing to save yet."
            try:
                strengths = dict(zip(SLIDER_ATTRIBUTES, values))
                if kind == "png":
                    path = editor.export_png(name, face, editor.render(name, face, strengths, how, pose_how, kept))
                else:
                    path = editor.export_gif(name, face, strengths, attribute, how, pose_how, kept)
            except UserError as exc:
                return gr.skip(), f"**error:** {exc}"
            return str(path), f"saved {path}" + (f" ({GIF_STEPS} steps of {attribute})" if kind == "gif" else "")

        extra = [run, face_state, method, pose_method, keep, last_slider, *sliders]
        save_png.click(lambda *a: export("png", *a), extra, [download, status])
        save_gif.click(lambda *a: export("gif", *a), extra, [download, status])
    return page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders (VAE, Glow, PGGAN)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--out", default="runs/app", help="output folder: exports, new directions, uploads")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="upload size limit in MB (default 10)")
    args = parser.parse_args()
    out = Path(args.out)
    max_bytes = int(args.max_upload_mb * 2**20)
    editor = Editor(args.runs, out, args.device, max_upload_bytes=max_bytes)
    # Gradio keeps uploads and shown images in GRADIO_TEMP_DIR: inside the output folder, like everything else.
    os.environ["GRADIO_TEMP_DIR"] = str((out / "gradio").resolve())
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    if not 0 < args.port < 65536:
        raise EditorError(f"--port {args.port}: expected 1..65535")
    page = build_page(editor)
    # Gradio refuses larger uploads itself (a message on the page); the editor checks again, with its own words.
    page.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port,
                                                   max_file_size=max_bytes + 2**20, show_error=False,
                                                   theme=gr.themes.Default(font=["sans-serif"],
                                                                           font_mono=["monospace"]))
    return 0


if __name__ == "__main__":
    run_main(main)
