from inference.worker.testmodels.build import _main

_main()
