"""``python -m sensortasks.listbench [ROWS]``: the listing benchmark (`sensortasks.tools.listbench`)
under the short name the performance targets use."""

from sensortasks.tools.listbench import main

if __name__ == "__main__":
    main()
