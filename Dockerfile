FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY automation ./automation
COPY models ./models
COPY migrations ./migrations
COPY templates ./templates
RUN pip install --no-cache-dir .
ENV OMP_NUM_THREADS=1
ENTRYPOINT []
CMD ["shoal", "--help"]
