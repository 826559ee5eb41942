"""The yardstick of bench_startup: a bare @hydra.main app on the project's conf/ tree."""

import hydra


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg) -> None:
    pass


if __name__ == "__main__":
    main()
