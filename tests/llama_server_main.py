"""llama-cpp-python's OpenAI-compatible server, with llama.cpp's extra buffer types off.

``python -m tests.llama_server_main --model ...`` takes the server's own arguments. The one change:
model loading sets ``use_extra_bufts = False``, so llama.cpp does not repack weights into its
CPU-specific buffers (AMX on CPUs that advertise it). On this project's machines the CPU reports
AMX but the sandbox's kernel faults on AMX tiles: the unpatched server dies with a general
protection fault in ``libggml-cpu`` on its first request. The llama.cpp build offers no runtime
switch for it, and repacking only changes speed, not what the model answers.
"""

import sys

import llama_cpp.llama_cpp as _c

_default_params = _c.llama_model_default_params


def _params():
    p = _default_params()
    p.use_extra_bufts = False
    return p


_c.llama_model_default_params = _params

if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    sys.exit(main())
