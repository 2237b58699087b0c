<?php
$db_password = 'never-shown-s3cr3t';
header('Content-Type: text/plain');
echo "ajax ran\n";
