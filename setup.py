from setuptools import find_packages, setup

WEB = ["starlette>=0.37", "uvicorn>=0.29", "jinja2>=3.1"]

setup(
    name="jobboard",
    version="0.1.0",
    description="A job-board coordinated worker fleet on ZooKeeper",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["jobboard", "jobboard.*"]),
    include_package_data=True,
    package_data={"jobboard.logbook": ["migrations/*.ini", "migrations/*.py",
                                       "migrations/versions/*.py"],
                  "jobboard.web": ["templates/*.html", "static/*"]},
    install_requires=[
        "kazoo>=2.9",
        "msgpack>=1.0",
        "sqlalchemy>=2.0",
        "alembic>=1.12",
        "tenacity>=8.2",
        "prometheus-client>=0.17",
        "click>=8.1",
        "cronsim>=2.6",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        "mysql": ["pymysql>=1.1"],
        # the admin console (`jobboard web`)
        "web": WEB,
        # the browser test drives Debian's chromium: Playwright's own browsers
        # are never downloaded
        "test": ["pytest>=7.4", "pytest-timeout>=2.2", "hypothesis>=6.90", "psycopg[binary]>=3.1",
                 "pymysql>=1.1", *WEB, "httpx>=0.27", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["jobboard=jobboard.cli:main"]},
)
