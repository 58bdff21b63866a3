"""Manifests: YAML or CSV text → validated task specs, streamed, every problem located by file, line and column.

Pure apart from reading the manifest's own files. `loader` is the entry; the other modules are its parts:
`sourcetext` (bytes → checked text), `yamlsource` and `csvsource` (documents with locations), `taskfields`,
`taskplans` and `rowplans` (load-time checks into plans), `templates` (prompts and safe file names), `expansion`
(plans → specs, streamed), `chains` (`from:` ordering), `inputs` (input images of edit requests), `offload`
(a large manifest expanded in a child process while the store takes its rows).
"""

from batcher.manifest.loader import Manifest, load_manifest, load_manifest_text

__all__ = ["Manifest", "load_manifest", "load_manifest_text"]
