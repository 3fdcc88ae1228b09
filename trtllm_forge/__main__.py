from trtllm_forge.cli import main

main()
