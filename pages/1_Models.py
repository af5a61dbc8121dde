"""Models: list, details and lineage, rename, delete; create from scratch; import."""

import streamlit as st

from core.models import registry as models
from core.models.create import SIZE_PRESETS, CreateModelSpec
from core.models.importer import HUB_SUGGESTIONS, ImportModelSpec
from core.models.starter import AddStarterSpec
from ui import access, common, forms

common.setup_page("Models", "neurology")
st.title("Models")
common.live_jobs_panel()
forms.last_submitted()

yours, create, imports = st.tabs(["Your models", "Create from scratch", "Import"])

with yours:
    rows = models.list_dicts()
    if not rows:
        st.info("No models yet: add the starter model, create one from scratch, or import one.")
    else:
        st.dataframe(common.model_frame(rows), hide_index=True, width="stretch", key="models_table")
        chosen = common.model_choice(rows, key="model_pick")
        if chosen:
            forms.model_details(chosen)
            forms.rename_and_delete(chosen)

with create:
    with st.form("create_model"):
        name = st.text_input("Name", key="create_name", placeholder="my-tiny-gpt")
        c1, c2 = st.columns(2)
        arch = forms.field(CreateModelSpec, "arch", "Architecture", key="create_arch", where=c1)
        size = forms.field(
            CreateModelSpec, "size", "Size", key="create_size", where=c2,
            help="tiny: " + str(SIZE_PRESETS["tiny"]) + " · small: " + str(SIZE_PRESETS["small"]),
        )
        with st.expander("Advanced: explicit dimensions (override the preset)"):
            dims = forms.dims_inputs(CreateModelSpec)
            corpus = forms.field(CreateModelSpec, "corpus", "Tokenizer corpus (UTF-8 text file)", key="create_corpus", placeholder="assets/corpus.txt")
            seed = forms.field(CreateModelSpec, "seed", "Seed", key="create_seed")
        if st.form_submit_button("Create model", type="primary", disabled=not access.can_run()):
            forms.submit(lambda: CreateModelSpec(name=name, arch=arch, size=size, corpus=corpus, seed=seed, **dims))

with imports:
    st.markdown("**Starter model**: SmolLM2-135M-Instruct, shipped with the app; converted once, no network needed.")
    if st.button("Add starter model", key="add_starter", type="primary", disabled=not access.can_run()):
        forms.submit(lambda: AddStarterSpec())
    st.divider()
    with st.form("import_model"):
        where = st.radio("From", ["Local folder or .gguf file", "Hugging Face Hub"], horizontal=True, key="import_from")
        path = st.text_input("Local path", key="import_path", placeholder="/path/to/hf-folder or model.gguf",
                             help=common.PATHS_HELP)
        hub = st.selectbox("Hub id (needs the network)", HUB_SUGGESTIONS, key="import_hub", accept_new_options=True)
        import_name = st.text_input("Name", key="import_name")
        if st.form_submit_button("Import", disabled=not access.can_run()):
            source = path if where.startswith("Local") else hub
            forms.submit(lambda: ImportModelSpec(source=source or "", name=import_name))
