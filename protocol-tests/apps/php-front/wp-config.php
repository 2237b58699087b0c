<?php
// Served as source this would give the database password away.
define('DB_PASSWORD', 'never-shown-s3cr3t');
header('Content-Type: text/plain');
echo "config ran\n";
