"""The templatefix web app as a Hugging Face Space (Gradio SDK): ``python app.py``.

The Space's README front matter sets ``sdk: gradio``, ``app_file: app.py`` and ``hf_oauth: true``
(the visitor's own sign-in opens pull requests); its requirements install ``templatefix[app]``.
"""

from templatefix.ui.app import build_app

demo = build_app()

if __name__ == "__main__":
    demo.launch()
