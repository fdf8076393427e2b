from lorafair.cli import app

app()
